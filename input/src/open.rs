//! Opening one file for reading: regular files only, bounded by its kind.
use crate::{human_bytes, InputError, Kind};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A regular file opened for reading, with its size checked against its kind's cap.
#[derive(Debug)]
pub struct Input {
    file: File,
    path: PathBuf,
    size: u64,
    kind: Kind,
}

/// Opens `path` to read a file of `kind`: `O_NONBLOCK` (opening a FIFO never waits),
/// then `fstat` on the descriptor: anything but a regular file, or a file larger than
/// `kind`'s cap, is refused naming the file. Links are followed (reads only).
pub fn open(path: &Path, kind: Kind) -> Result<Input, InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| InputError::io(path, e))?;
    let meta = file.metadata().map_err(|e| InputError::io(path, e))?;
    if !meta.is_file() {
        return Err(InputError::NotRegular {
            path: path.to_path_buf(),
            found: file_kind(&meta),
            kind: kind.noun(),
        });
    }
    let size = meta.len();
    if size > kind.cap() {
        return Err(too_large(path, size, kind));
    }
    Ok(Input {
        file,
        path: path.to_path_buf(),
        size,
        kind,
    })
}

/// Reads the whole file at `path` as a file of `kind` (see [`open`]).
pub fn read(path: &Path, kind: Kind) -> Result<Vec<u8>, InputError> {
    open(path, kind)?.read_all()
}

/// Reads the whole UTF-8 text file at `path` as a file of `kind` (see [`open`]).
pub fn read_text(path: &Path, kind: Kind) -> Result<String, InputError> {
    open(path, kind)?.read_text()
}

impl Input {
    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its size when opened, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The open file (for ranged reads: shards).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, for readers that take ownership.
    pub fn into_file(self) -> File {
        self.file
    }

    /// A path that names exactly this open file (`/proc/self/fd/N`), for loaders that
    /// only take paths (libtorch): they read the file checked here, not whatever the
    /// path names by then. Valid while `self` lives.
    pub fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Reads all of it, never more than the kind's cap, even if it grew since opening.
    pub fn read_all(self) -> Result<Vec<u8>, InputError> {
        let cap = self.kind.cap();
        let mut bytes = Vec::with_capacity(self.size.min(cap) as usize);
        (&self.file)
            .take(cap + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| InputError::io(&self.path, e))?;
        if bytes.len() as u64 > cap {
            return Err(too_large(&self.path, bytes.len() as u64, self.kind));
        }
        Ok(bytes)
    }

    /// Reads all of it as UTF-8 text (see [`Input::read_all`]).
    pub fn read_text(self) -> Result<String, InputError> {
        let path = self.path.clone();
        String::from_utf8(self.read_all()?).map_err(|source| InputError::NotText { path, source })
    }
}

fn too_large(path: &Path, size: u64, kind: Kind) -> InputError {
    InputError::TooLarge {
        path: path.to_path_buf(),
        size: human_bytes(size),
        cap: human_bytes(kind.cap()),
        kind: kind.noun(),
    }
}

/// What a file that is not a regular file is, for messages.
pub(crate) fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_reads_whole_and_text_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "seed = 1\n").unwrap();
        assert_eq!(read_text(&p, Kind::Config).unwrap(), "seed = 1\n");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        let e = read_text(&p, Kind::Config).unwrap_err().to_string();
        assert!(e.contains("a.toml") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("image.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read(&fifo, Kind::Image).unwrap_err().to_string();
        assert!(e.contains("image.png") && e.contains("is a FIFO"), "{e}");
        let link = dir.path().join("config.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read(&link, Kind::Config).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("character device"),
            "{e}"
        );
        let e = read(dir.path(), Kind::Report).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read(&dir.path().join("absent"), Kind::Report).unwrap_err();
        assert!(e.to_string().contains("absent") && e.path().ends_with("absent"));
        assert!(e.reason().starts_with("No such file"), "{}", e.reason());
    }

    #[test]
    fn files_over_their_kinds_cap_are_refused_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.toml");
        let f = File::create(&p).unwrap();
        f.set_len(Kind::Config.cap() + 1).unwrap();
        let e = read(&p, Kind::Config).unwrap_err().to_string();
        assert!(e.contains("big.toml") && e.contains("16.0 MiB"), "{e}");
        f.set_len(Kind::Config.cap()).unwrap();
        assert_eq!(
            read(&p, Kind::Config).unwrap().len() as u64,
            Kind::Config.cap()
        );
    }

    #[test]
    fn the_fd_path_names_the_file_opened_even_after_a_swap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.safetensors");
        std::fs::write(&p, "checked").unwrap();
        let input = open(&p, Kind::Tensors).unwrap();
        std::fs::write(dir.path().join("other"), "swapped").unwrap();
        std::fs::rename(dir.path().join("other"), &p).unwrap();
        assert_eq!(std::fs::read_to_string(input.fd_path()).unwrap(), "checked");
    }
}
