//! What can go wrong opening or listing a file; every variant names the path.
use std::path::PathBuf;

/// An input that could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The operating system refused (missing, permission, I/O error, a link that loops).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Not a regular file: reading it could block or never end.
    #[error("{}: is a {found}, not a regular file; sat reads a {kind} only from a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is (`FIFO`, `character device`, `directory`, …).
        found: &'static str,
        /// What sat wanted to read.
        kind: &'static str,
    },
    /// Larger than a file of its kind may be.
    #[error("{}: {size} is more than a {kind} may have ({cap})", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (or the bytes read so far), for people.
        size: String,
        /// The cap, for people.
        cap: String,
        /// What sat wanted to read.
        kind: &'static str,
    },
    /// Not UTF-8 where text was expected.
    #[error("{}: not UTF-8 text ({source})", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
        /// Where the bytes stop being UTF-8.
        source: std::string::FromUtf8Error,
    },
    /// A directory entry that is a link looping back, leading nowhere, or a second name
    /// for a directory already listed.
    #[error("{}: {why}", path.display())]
    Loop {
        /// The entry.
        path: PathBuf,
        /// What it loops to.
        why: String,
    },
}

impl InputError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// What is wrong, without the path (for messages that name the file already).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        full.strip_prefix(&prefix).unwrap_or(&full).to_string()
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Io { path, .. }
            | Self::NotRegular { path, .. }
            | Self::TooLarge { path, .. }
            | Self::NotText { path, .. }
            | Self::Loop { path, .. } => path,
        }
    }
}
