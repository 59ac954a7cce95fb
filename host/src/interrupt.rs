//! Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and `kill` send): the first one
//! sets a flag that training and evaluation poll between batches, so they stop cleanly
//! with status `interrupted`; a second one ends the process at once. The exit code is
//! 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Evaluation or training stopped because of a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name())]
pub struct Interrupted;

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    // Only async-signal-safe work: atomics and _exit.
    if REQUESTED.load(Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    SIGNAL.store(signal, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM and returns the flag it sets.
pub fn install() -> std::io::Result<&'static AtomicBool> {
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only touches atomics.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(&REQUESTED)
}

/// Whether a signal asked the process to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
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
/// when none was recorded).
pub fn exit_code() -> u8 {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => 130,
        s => (128 + s).clamp(0, 255) as u8,
    }
}

/// `SIGINT (Ctrl-C)`, `SIGTERM` or `a signal`.
pub fn signal_name() -> &'static str {
    #[cfg(unix)]
    match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => return "SIGINT (Ctrl-C)",
        libc::SIGTERM => return "SIGTERM",
        _ => {}
    }
    "a signal"
}

/// Whether `error` is, or was caused by, an interruption.
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Interrupted>())
}
