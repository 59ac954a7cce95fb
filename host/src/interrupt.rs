//! Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and `kill` send): the first one
//! sets a flag that training and evaluation poll between batches, so they stop cleanly
//! with status `interrupted`; a second one ends the process at once. The exit code is
//! 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The flags the handlers set: any stop requested, and which signal asked.
struct Flags {
    requested: Arc<AtomicBool>,
    sigint: Arc<AtomicBool>,
    sigterm: Arc<AtomicBool>,
}

fn flags() -> &'static Flags {
    static FLAGS: OnceLock<Flags> = OnceLock::new();
    FLAGS.get_or_init(|| Flags {
        requested: Arc::new(AtomicBool::new(false)),
        sigint: Arc::new(AtomicBool::new(false)),
        sigterm: Arc::new(AtomicBool::new(false)),
    })
}

/// Evaluation or training stopped because of a signal.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {}", signal_name())]
pub struct Interrupted;

/// Installs the handlers for SIGINT and SIGTERM (once; `signal-hook`'s safe
/// registration, whose handlers only store to atomics or `_exit`) and returns the flag
/// they set. A second signal, when a stop was already requested, ends the process at
/// once with 128 + its number.
pub fn install() -> std::io::Result<&'static AtomicBool> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let f = flags();
    let installed = INSTALLED.get_or_init(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        use signal_hook::flag::{register, register_conditional_shutdown};
        (|| -> std::io::Result<()> {
            for (signal, which) in [(SIGINT, &f.sigint), (SIGTERM, &f.sigterm)] {
                // Handlers run in registration order: the shutdown sees the flag as the
                // previous signal left it, then this signal sets it.
                register_conditional_shutdown(signal, 128 + signal, Arc::clone(&f.requested))?;
                register(signal, Arc::clone(which))?;
                register(signal, Arc::clone(&f.requested))?;
            }
            Ok(())
        })()
        .map_err(|e| e.to_string())
    });
    match installed {
        Ok(()) => Ok(&f.requested),
        Err(e) => Err(std::io::Error::other(e.clone())),
    }
}

/// Whether a signal asked the process to stop.
pub fn requested() -> bool {
    flags().requested.load(Ordering::SeqCst)
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
    if flags().sigterm.load(Ordering::SeqCst) && !flags().sigint.load(Ordering::SeqCst) {
        143
    } else {
        130
    }
}

/// `SIGINT (Ctrl-C)`, `SIGTERM` or `a signal`.
pub fn signal_name() -> &'static str {
    let f = flags();
    if f.sigint.load(Ordering::SeqCst) {
        "SIGINT (Ctrl-C)"
    } else if f.sigterm.load(Ordering::SeqCst) {
        "SIGTERM"
    } else {
        "a signal"
    }
}

/// Whether `error` is, or was caused by, an interruption.
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Interrupted>())
}
