//! Errors that cross the plugin boundary as values, and the Rust-side error type.
use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What went wrong inside a component, as reported across the boundary.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The component's configuration was rejected.
    Config,
    /// The inputs handed to the component were not what it accepts.
    InvalidInput,
    /// A libtorch operation or other run-time step failed.
    Runtime,
    /// The component panicked; the panic was caught on its side of the boundary.
    Panic,
    /// No component of that name and kind is in the library.
    UnknownComponent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Runtime => "run-time error",
            ErrorKind::Panic => "panic",
            ErrorKind::UnknownComponent => "unknown component",
        })
    }
}

/// An error returned by a plugin (or by the host's oracle) across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// Category of the failure.
    pub kind: ErrorKind,
    /// Human-readable description.
    pub message: RString,
}

impl PluginError {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
        }
    }
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// An invalid-input error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// A run-time error.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Runtime, message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<tch::TchError> for PluginError {
    fn from(e: tch::TchError) -> Self {
        Self::runtime(format!("libtorch: {e}"))
    }
}

/// Errors seen on the host side of the boundary, with the component named.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A component returned an error.
    #[error("{component}: {error}")]
    Component {
        /// Name of the component.
        component: String,
        /// What it returned.
        error: PluginError,
    },
    /// A component returned a tensor that breaks its contract.
    #[error("{component} returned {what}")]
    Contract {
        /// Name of the component.
        component: String,
        /// What is wrong with the returned value.
        what: String,
    },
    /// A libtorch operation on the host side failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Turns a caught panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into [`ErrorKind::Panic`] so it never unwinds across FFI.
pub(crate) fn catch<T>(
    who: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> Result<T, PluginError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(PluginError::new(
            ErrorKind::Panic,
            format!("{who} panicked: {}", panic_message(payload.as_ref())),
        )),
    }
}
