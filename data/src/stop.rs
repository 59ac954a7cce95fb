//! Stopping on request. The data layer's long loops (generating `shapes`, decoding a
//! split, waiting for streamed batches) ask [`requested`] and end with the error
//! [`interrupted`] makes, which [`is_interruption`] recognises by its kind, not its
//! text. The host hands in its check once ([`watch`]): the flag its SIGINT/SIGTERM
//! handler sets. Without one, nothing stops.
use crate::DataError;
use std::path::Path;
use std::sync::OnceLock;

static CHECK: OnceLock<fn() -> bool> = OnceLock::new();

/// Makes [`requested`] ask `check` from now on (the first call wins; later ones are
/// ignored, so a library cannot replace the host's check).
pub fn watch(check: fn() -> bool) {
    let _ = CHECK.set(check);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    CHECK.get().is_some_and(|check| check())
}

/// The error of a loop stopped on request while it worked on `what` (a file, a
/// directory or a dataset's name): an I/O error of kind
/// [`std::io::ErrorKind::Interrupted`] naming it.
pub fn interrupted(what: impl AsRef<Path>) -> DataError {
    DataError::io(
        what.as_ref(),
        std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped on request"),
    )
}

/// `Err(interrupted(what))` once a stop was requested.
pub fn check(what: impl AsRef<Path>) -> Result<(), DataError> {
    if requested() {
        Err(interrupted(what))
    } else {
        Ok(())
    }
}

/// Whether `error` is a loop's stop on request (made by [`interrupted`]).
pub fn is_interruption(error: &DataError) -> bool {
    matches!(error, DataError::Io { error, .. } if error.kind() == std::io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_error_is_recognised_by_its_kind_and_names_what_stopped() {
        let e = interrupted("shapes");
        assert!(is_interruption(&e));
        assert_eq!(e.to_string(), "shapes: stopped on request");
        let other = DataError::io(Path::new("x"), std::io::Error::other("disk on fire"));
        assert!(!is_interruption(&other));
        assert!(!is_interruption(&DataError::Config("interrupted".into())));
    }
}
