//! The parallel pipeline that feeds a step: worker threads make batches (read, decode,
//! augment) ahead of the consumer, at most `prefetch` batches ahead, and hand them out
//! in order. The consumer's time blocked on a batch not yet made is the data wait.
//!
//! What a batch holds never depends on which worker made it or how many there are:
//! each sample's random draws come from its own stream (see [`crate::stream`]).
use crate::error::DataError;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What makes batch `j` of a loader.
pub type MakeBatch<T> = dyn Fn(usize) -> Result<T, DataError> + Send + Sync;

struct State<T> {
    done: BTreeMap<usize, Result<T, DataError>>,
    consumed: usize,
}

struct Shared<T> {
    make: Box<MakeBatch<T>>,
    jobs: usize,
    prefetch: usize,
    next_job: AtomicUsize,
    stop: AtomicBool,
    state: Mutex<State<T>>,
    changed: Condvar,
}

/// Batches `0..jobs` made by `workers` threads, handed out in order.
pub struct Loader<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    waited: Duration,
}

impl<T: Send + 'static> Loader<T> {
    /// Starts `workers` threads (at least one) that make batches `first..jobs` with
    /// `make`, at most `prefetch` (at least one) ahead of the consumer.
    pub fn new(
        jobs: usize,
        first: usize,
        workers: usize,
        prefetch: usize,
        make: Box<MakeBatch<T>>,
    ) -> Self {
        let first = first.min(jobs);
        let shared = Arc::new(Shared {
            make,
            jobs,
            prefetch: prefetch.max(1),
            next_job: AtomicUsize::new(first),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                done: BTreeMap::new(),
                consumed: first,
            }),
            changed: Condvar::new(),
        });
        let threads = workers.max(1).min((jobs - first).max(1));
        let workers = (0..threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sat-data-{i}"))
                    .spawn(move || work(&shared))
                    .expect("a data worker thread starts")
            })
            .collect();
        Self {
            shared,
            workers,
            next: first,
            waited: Duration::ZERO,
        }
    }

    /// The time the consumer has waited for batches so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, State<T>> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn work<T>(shared: &Shared<T>) {
    loop {
        let job = shared.next_job.fetch_add(1, Ordering::SeqCst);
        if job >= shared.jobs {
            return;
        }
        {
            let mut state = lock(shared);
            while job >= state.consumed + shared.prefetch && !shared.stop.load(Ordering::SeqCst) {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let made = catch_unwind(AssertUnwindSafe(|| (shared.make)(job))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(DataError::Config(format!(
                "a data worker failed on batch {job}: {message}"
            )))
        });
        lock(shared).done.insert(job, made);
        shared.changed.notify_all();
    }
}

impl<T: Send + 'static> Iterator for Loader<T> {
    type Item = Result<T, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.shared.jobs {
            return None;
        }
        let start = Instant::now();
        let mut state = lock(&self.shared);
        let made = loop {
            if let Some(made) = state.done.remove(&self.next) {
                break made;
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        };
        state.consumed += 1;
        drop(state);
        self.shared.changed.notify_all();
        self.waited += start.elapsed();
        self.next += 1;
        Some(made)
    }
}

impl<T: Send + 'static> Drop for Loader<T> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared
            .next_job
            .store(self.shared.jobs, Ordering::SeqCst);
        self.shared.changed.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_in_order_whatever_the_workers() {
        for workers in [1, 2, 5] {
            let loader = Loader::new(
                20,
                0,
                workers,
                3,
                Box::new(|j| {
                    std::thread::sleep(Duration::from_micros(((j * 7919) % 13) as u64 * 100));
                    Ok(j * 10)
                }),
            );
            let got: Vec<usize> = loader.map(|r| r.unwrap()).collect();
            assert_eq!(got, (0..20).map(|j| j * 10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_start_skips_batches_without_making_them_and_errors_and_panics_come_back() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let loader = Loader::new(
            6,
            4,
            2,
            2,
            Box::new(move |j| {
                counter.fetch_add(1, Ordering::SeqCst);
                if j == 5 {
                    panic!("bad batch");
                }
                Ok(j)
            }),
        );
        let got: Vec<_> = loader.collect();
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_eq!(got[0].as_ref().unwrap(), &4);
        assert!(got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("bad batch"));
    }

    #[test]
    fn workers_stay_within_the_prefetch_bound_and_stop_on_drop() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let mut loader = Loader::new(
            1000,
            0,
            4,
            3,
            Box::new(move |j| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(j)
            }),
        );
        assert_eq!(loader.next().unwrap().unwrap(), 0);
        // Let the workers run as far as they may: 1 consumed + 3 ahead.
        for _ in 0..2000 {
            if made.load(Ordering::SeqCst) >= 4 {
                break;
            }
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(made.load(Ordering::SeqCst), 4);
        drop(loader);
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }
}
