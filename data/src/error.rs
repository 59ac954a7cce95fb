//! Errors of the dataset readers: each names the file and, where it has one, the record.
use std::path::{Path, PathBuf};

/// A dataset that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why (part of the message, so not also a `source` that error chains repeat).
        error: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One record (line, entry or sample) of the file is wrong.
    #[error("{}, {record}: {message}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// Which record, e.g. `line 7` or `record 12`.
        record: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration asks for something the data cannot give.
    #[error("{0}")]
    Config(String),
    /// The file is not one sat reads (not a regular file, too large, a link loop).
    #[error(transparent)]
    Input(#[from] sat_input::InputError),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
    /// A format error in `path`.
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
    /// An error in one record of `path`.
    pub fn record(path: &Path, record: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Record {
            path: path.to_path_buf(),
            record: record.into(),
            message: message.into(),
        }
    }
}

/// Reads a whole file of `kind` (a regular file, at most the kind's cap), naming it on
/// failure.
pub fn read(path: &Path, kind: sat_input::Kind) -> Result<Vec<u8>, DataError> {
    Ok(sat_input::read(path, kind)?)
}

/// Reads a whole text annotation (a regular file, UTF-8, at most the annotation cap),
/// naming it on failure.
pub fn read_text(path: &Path) -> Result<String, DataError> {
    Ok(sat_input::read_text(path, sat_input::Kind::Annotation)?)
}
