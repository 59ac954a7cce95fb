//! Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and `kill` send), handled by a
//! thread of their own (`signal-hook`'s iterator: the handlers only wake it).
//!
//! - The first signal requests a stop: training and evaluation poll [`requested`]
//!   between batches, the host's oracle refuses every further model call of a plugin
//!   (so an attack or saliency source stops inside its loop, at its next model call),
//!   and the data layer's loops ask it too ([`sat_data::stop`]). The command stops
//!   cleanly, a run with status `interrupted`.
//! - A second signal ends the process at once, after the command's [`on_abort`] hook
//!   (a run marks its `metrics.json` `interrupted`) has run, waiting at most
//!   [`ABORT_GRACE`] for it; writes made under [`exclusive`] are never cut in two.
//!
//! The exit code is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
use crate::plugins::component::ComponentError;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// A stop was requested (the first signal).
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// What a second signal runs, and the writes it must not cut in two.
static ABORT: Abort = Abort::new();

/// The longest a second signal waits for the abort hook (and for a write in progress)
/// before the process ends anyway.
pub const ABORT_GRACE: Duration = Duration::from_secs(5);

type Hook = Box<dyn Fn() + Send>;

/// Evaluation or training stopped because of a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name())]
pub struct Interrupted;

/// Starts the signal thread for SIGINT and SIGTERM (once) and returns the flag the
/// first signal sets; from then on [`sat_data::stop`] asks [`stop_now`].
pub fn install() -> std::io::Result<&'static AtomicBool> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("sat-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    received(signal);
                }
            })
            .map_err(|e| e.to_string())?;
        sat_data::stop::watch(stop_now);
        Ok(())
    });
    match installed {
        Ok(()) => Ok(&REQUESTED),
        Err(e) => Err(std::io::Error::other(e.clone())),
    }
}

/// What the signal thread does with `signal`: the first requests a stop, a second
/// runs the abort hook and ends the process.
fn received(signal: i32) {
    if SIGNAL
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        REQUESTED.store(true, Ordering::SeqCst);
        log::warn!(
            "{}: stopping at the next batch or model call (send it again to stop at once)",
            name_of(signal)
        );
        return;
    }
    log::warn!("{} again: stopping now", name_of(signal));
    if !ABORT.run(ABORT_GRACE) {
        log::error!(
            "the status could not be recorded within {} s",
            ABORT_GRACE.as_secs()
        );
    }
    log::logger().flush();
    signal_hook::low_level::exit(128 + signal);
}

/// The abort hook and the lock of the writes a second signal must not cut in two.
struct Abort {
    hook: Mutex<Option<Hook>>,
    writes: Mutex<()>,
}

impl Abort {
    const fn new() -> Self {
        Self {
            hook: Mutex::new(None),
            writes: Mutex::new(()),
        }
    }

    /// Runs the hook on a thread of its own once the write lock is free (a write in
    /// progress ends first), and keeps the lock, so that no write starts after it;
    /// `false` if that took longer than `grace`.
    fn run(&'static self, grace: Duration) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("sat-abort".into())
            .spawn(move || {
                let writes = lock(&self.writes);
                if let Some(hook) = lock(&self.hook).take() {
                    hook();
                }
                let _ = done.send(());
                // The process is about to end: no other write may start.
                std::mem::forget(writes);
            });
        spawned.is_ok() && finished.recv_timeout(grace).is_ok()
    }

    fn exclusive<T>(&self, write: impl FnOnce() -> T) -> T {
        let _writes = lock(&self.writes);
        write()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers what a second signal runs before the process ends (replacing any earlier
/// hook), until the returned guard is dropped. The hook runs on another thread, while
/// no write under [`exclusive`] is in progress.
#[must_use = "the hook is removed when the guard is dropped"]
pub fn on_abort(hook: impl Fn() + Send + 'static) -> AbortHook {
    *lock(&ABORT.hook) = Some(Box::new(hook));
    AbortHook(())
}

/// Keeps the hook of [`on_abort`] registered while it lives.
pub struct AbortHook(());

impl Drop for AbortHook {
    fn drop(&mut self) {
        lock(&ABORT.hook).take();
    }
}

/// Runs `write` so that a second signal neither cuts it in two nor writes beside it: the
/// abort hook waits for it to end, and nothing under `exclusive` starts after the hook.
pub fn exclusive<T>(write: impl FnOnce() -> T) -> T {
    ABORT.exclusive(write)
}

/// Forgets a stop request, so that the next command of a process that embeds sat (the
/// Python package) starts afresh after an earlier one was interrupted.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
    SIGNAL.store(0, Ordering::SeqCst);
}

/// Whether a signal asked the process to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst) || simulated()
}

/// Set in a data-parallel run: its ranks agree on a stop before each batch, so no rank
/// may leave a batch half done while the others wait for it in a collective.
static AGREED: AtomicBool = AtomicBool::new(false);

/// Makes [`stop_now`] wait for the ranks' agreement (a data-parallel run).
pub fn stop_between_batches_only() {
    AGREED.store(true, Ordering::SeqCst);
}

/// Whether loops inside a batch — plugins' model calls through the oracle, the data
/// layer's loading — should stop now: a stop was requested and the process is not one
/// rank of several (see [`stop_between_batches_only`]).
pub fn stop_now() -> bool {
    requested() && !AGREED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a signal asked the process to stop.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// The exit code of a command stopped by the signal received: 128 + its number (130
/// for SIGINT, also when none was recorded; 143 for SIGTERM).
pub fn exit_code() -> u8 {
    if SIGNAL.load(Ordering::SeqCst) == signal_hook::consts::SIGTERM {
        143
    } else {
        130
    }
}

/// `SIGINT (Ctrl-C)`, `SIGTERM` or `a signal`.
pub fn signal_name() -> &'static str {
    name_of(SIGNAL.load(Ordering::SeqCst))
}

fn name_of(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Whether `error` is, or was caused by, an interruption: [`Interrupted`] in its chain,
/// or — once a stop was requested — a plugin component's error (the oracle refuses a
/// plugin's model calls from then on, and the plugin returns that refusal, perhaps in
/// words of its own) or a data loop's stop ([`sat_data::stop::is_interruption`]).
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    let stopping = requested();
    error.chain().any(|e| {
        e.is::<Interrupted>()
            || (stopping && e.is::<ComponentError>())
            || (stopping
                && e.downcast_ref::<sat_data::DataError>()
                    .is_some_and(sat_data::stop::is_interruption))
    })
}

/// `error`, or [`Interrupted`] in its place when [`is_interrupted`] says it is the
/// consequence of a stop request (the original, which says where the stop was noticed,
/// is logged).
pub fn or_interrupted(error: anyhow::Error) -> anyhow::Error {
    if is_interrupted(&error) && !error.is::<Interrupted>() {
        log::info!("stopped in: {error:#}");
        anyhow::Error::new(Interrupted)
    } else {
        error
    }
}

#[cfg(test)]
thread_local! {
    /// A stop request seen by this thread only (unit tests).
    static SIMULATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn simulated() -> bool {
    SIMULATED.with(std::cell::Cell::get)
}

#[cfg(not(test))]
fn simulated() -> bool {
    false
}

/// Makes [`requested`] true on this thread while the guard lives (unit tests: other
/// tests, on other threads, see no stop).
#[cfg(test)]
pub(crate) fn simulate_stop() -> impl Drop {
    struct Simulated;
    impl Drop for Simulated {
        fn drop(&mut self) {
            SIMULATED.with(|s| s.set(false));
        }
    }
    SIMULATED.with(|s| s.set(true));
    Simulated
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn after_a_stop_request_component_errors_are_interruptions() {
        let component = || {
            anyhow::Error::new(ComponentError {
                kind: "attack",
                name: "apgd-ce".into(),
                library: "lib.so".into(),
                message: "run-time error: the host is stopping".into(),
            })
            .context("evaluating apgd-ce at epsilon 8/255")
        };
        let stopped = sat_data::stop::interrupted("shapes");
        assert!(!is_interrupted(&component()));
        assert!(!is_interrupted(&anyhow::Error::new(stopped)));
        let _stop = simulate_stop();
        assert!(is_interrupted(&component()));
        assert!(is_interrupted(
            &anyhow::Error::new(sat_data::stop::interrupted("shapes")).context("loading")
        ));
        assert!(!is_interrupted(&anyhow::anyhow!("disk full")));
        assert!(or_interrupted(component()).is::<Interrupted>());
        assert!(!or_interrupted(anyhow::anyhow!("disk full")).is::<Interrupted>());
    }

    #[test]
    fn the_abort_hook_waits_for_a_write_in_progress_and_is_bounded() {
        static STATE: Abort = Abort::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        *lock(&STATE.hook) = Some(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        // A write in progress: the hook waits for it, beyond a short grace.
        let (started, writing) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            STATE.exclusive(|| {
                started.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            })
        });
        writing.recv().unwrap();
        assert!(
            !STATE.run(Duration::from_millis(50)),
            "bounded by the grace"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "not during the write");
        writer.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "the hook never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        // After the hook no write starts: the lock stays taken.
        assert!(STATE.writes.try_lock().is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_abort_hook_is_removed() {
        let hook = on_abort(|| {});
        assert!(lock(&ABORT.hook).is_some());
        drop(hook);
        assert!(lock(&ABORT.hook).is_none());
    }
}
