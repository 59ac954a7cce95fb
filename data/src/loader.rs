//! The parallel pipeline that feeds a step: worker threads make batches (read, decode,
//! augment) ahead of the consumer, at most `prefetch` batches ahead, and hand them out
//! in order. The consumer's time blocked on a batch not yet made is the data wait.
//!
//! What a batch holds never depends on which worker made it or how many there are:
//! each sample's random draws come from its own stream (see [`crate::stream`]).
//!
//! A stop request ([`crate::stop`]) ends the wait for a batch within
//! [`STOP_POLL`]; the workers make no new batch after it, and a loader dropped after
//! one does not wait for a worker still reading (a slow disk or network share).
use crate::error::DataError;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What makes batch `j` of a loader.
pub type MakeBatch<T> = dyn Fn(usize) -> Result<T, DataError> + Send + Sync;

/// How often a consumer waiting for a batch asks whether a stop was requested.
pub const STOP_POLL: Duration = Duration::from_millis(50);

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
    /// Whether a stop was requested ([`crate::stop::requested`]).
    stop_requested: fn() -> bool,
    state: Mutex<State<T>>,
    changed: Condvar,
}

impl<T> Shared<T> {
    /// Whether the workers should make no more batches.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || (self.stop_requested)()
    }
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
        Self::stopping_when(jobs, first, workers, prefetch, make, crate::stop::requested)
    }

    /// As [`Loader::new`], with `stop_requested` in place of [`crate::stop::requested`].
    pub fn stopping_when(
        jobs: usize,
        first: usize,
        workers: usize,
        prefetch: usize,
        make: Box<MakeBatch<T>>,
        stop_requested: fn() -> bool,
    ) -> Self {
        let first = first.min(jobs);
        let shared = Arc::new(Shared {
            make,
            jobs,
            prefetch: prefetch.max(1),
            next_job: AtomicUsize::new(first),
            stop: AtomicBool::new(false),
            stop_requested,
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
            while job >= state.consumed + shared.prefetch && !shared.stopping() {
                state = shared
                    .changed
                    .wait_timeout(state, STOP_POLL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        if shared.stopping() {
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
            if (self.shared.stop_requested)() {
                self.waited += start.elapsed();
                return Some(Err(crate::stop::interrupted(format!(
                    "batch {} of the data loader",
                    self.next
                ))));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, STOP_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
        let workers = self.workers.drain(..);
        if (self.shared.stop_requested)() {
            // The process is stopping: a worker blocked in a read is left to end on its
            // own (it holds its share of the state) rather than waited for.
            return;
        }
        for worker in workers {
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

    #[test]
    fn a_stop_request_ends_the_wait_for_a_slow_worker() {
        static STOP: AtomicBool = AtomicBool::new(false);
        let mut loader = Loader::stopping_when(
            3,
            0,
            1,
            1,
            Box::new(|j| {
                if j == 1 {
                    // A read that hangs (a dead network share) until the stop.
                    while !STOP.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::thread::sleep(Duration::from_secs(30));
                }
                Ok(j)
            }),
            || STOP.load(Ordering::SeqCst),
        );
        assert_eq!(loader.next().unwrap().unwrap(), 0);
        let stopper = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            STOP.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        let err = loader.next().unwrap().unwrap_err();
        assert!(crate::stop::is_interruption(&err), "{err}");
        assert!(err.to_string().contains("batch 1"), "{err}");
        drop(loader);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        stopper.join().unwrap();
    }
}
