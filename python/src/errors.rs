//! The exceptions the package raises: `sat.SatError` (a `RuntimeError`) for what a
//! component or the host refuses, `TypeError`/`ValueError` for arguments.
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

create_exception!(
    sat,
    SatError,
    PyRuntimeError,
    "An error from sat: a component, a plugin library or the host refused the call."
);

/// `SatError` with `message`.
pub fn sat(message: impl std::fmt::Display) -> PyErr {
    SatError::new_err(message.to_string())
}

/// `SatError` from an error chain, every cause on one line.
pub fn chain(error: &anyhow::Error) -> PyErr {
    SatError::new_err(sat_models::without_frames(&format!("{error:#}")))
}

/// `ValueError` with `message`.
pub fn value(message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(message.to_string())
}

/// `TypeError` with `message`.
pub fn type_error(message: impl std::fmt::Display) -> PyErr {
    PyTypeError::new_err(message.to_string())
}
