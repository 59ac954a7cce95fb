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

/// A component held on its library's side of the boundary: every call into it and its
/// drop run with panics caught, so nothing unwinds across FFI.
pub(crate) struct Guarded<T: ?Sized> {
    /// How messages name it, e.g. "attack `pgd`".
    who: String,
    /// The component; `None` only while it is being dropped.
    inner: Option<Box<T>>,
}

impl<T: ?Sized> Guarded<T> {
    /// Holds `inner`, named `who` in errors.
    pub(crate) fn new(who: String, inner: Box<T>) -> Self {
        Self {
            who,
            inner: Some(inner),
        }
    }

    /// Calls `f` on the component, turning a panic into an error naming it.
    pub(crate) fn call<R>(
        &mut self,
        f: impl FnOnce(&mut T) -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        let Self { who, inner } = self;
        catch(who, || match inner.as_deref_mut() {
            Some(inner) => f(inner),
            None => Err(PluginError::runtime(format!("{who} was already dropped"))),
        })
    }

    /// Calls `f` on the component by shared reference, turning a panic into an error.
    pub(crate) fn call_ref<R>(
        &self,
        f: impl FnOnce(&T) -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        catch(&self.who, || match self.inner.as_deref() {
            Some(inner) => f(inner),
            None => Err(PluginError::runtime(format!("{} was already dropped", self.who))),
        })
    }
}

impl<T: ?Sized> Drop for Guarded<T> {
    fn drop(&mut self) {
        let inner = self.inner.take();
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(inner))) {
            // A destructor cannot return an error: say it, and carry on.
            eprintln!(
                "warning: {} panicked while being dropped: {}",
                self.who,
                panic_message(payload.as_ref())
            );
        }
    }
}
