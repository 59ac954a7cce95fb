//! Faults during a run: a panic in the host (tch's operations without the `f_` prefix
//! panic on libtorch errors, CUDA out of memory say) becomes an error like any other,
//! so the run ends with status `failed` and its message recorded, and the process exits
//! with [`PANIC_EXIT_CODE`] instead of Rust's 101.
use std::cell::RefCell;
use std::fmt;
use std::panic::AssertUnwindSafe;

/// The exit code of a command that stopped on a panic in the host (`EX_SOFTWARE` of
/// `sysexits.h`); a reported error exits with 1.
pub const PANIC_EXIT_CODE: u8 = 70;

/// A panic caught in the host.
#[derive(Debug)]
pub struct Panicked {
    /// The panic's message.
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(at) => write!(f, "the host panicked at {at}: {}", self.message),
            None => write!(f, "the host panicked: {}", self.message),
        }
    }
}

impl std::error::Error for Panicked {}

thread_local! {
    /// Where the last panic on this thread happened (set by the hook [`catch_panics`]
    /// installs).
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once, a panic hook that notes the panic's location and then runs the hook
/// that was there before (which prints the panic to stderr).
fn note_locations() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = LAST_LOCATION
                .try_with(|l| *l.borrow_mut() = info.location().map(ToString::to_string));
            previous(info);
        }));
    });
}

/// The message of a panic's payload (`panic!` makes a `&str` or a `String`).
pub fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `f`; a panic in it becomes a [`Panicked`] error.
pub fn catch_panics<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    note_locations();
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(Panicked {
            message: payload_message(payload.as_ref()),
            location: LAST_LOCATION.with(|l| l.borrow_mut().take()),
        }
        .into()),
    }
}

/// Whether `error` is, or was caused by, a caught panic.
pub fn is_panic(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Panicked>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message_and_place() {
        let e = catch_panics::<()>(|| panic!("deliberate {}", 7)).unwrap_err();
        assert!(is_panic(&e));
        let shown = e.to_string();
        assert!(shown.contains("deliberate 7"), "{shown}");
        assert!(shown.contains("fault.rs:"), "{shown}");
        let e = catch_panics::<()>(|| std::panic::panic_any(3u8)).unwrap_err();
        assert!(e.to_string().contains("a panic without a message"));
        assert_eq!(catch_panics(|| Ok(5)).unwrap(), 5);
        let plain = catch_panics::<()>(|| anyhow::bail!("an error")).unwrap_err();
        assert!(!is_panic(&plain));
    }
}
