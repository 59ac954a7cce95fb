//! Listing a directory with links followed, reporting the links that loop or lead nowhere
//! and the directories reached twice, instead of skipping them without a word.
use crate::open::file_kind;
use crate::InputError;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a listed entry is, links followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else (FIFO, socket, device), named.
    Other(&'static str),
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `dir` joined with the entry's name.
    pub path: PathBuf,
    /// What it is, links followed.
    pub kind: EntryKind,
    id: (u64, u64),
}

/// The entries of `dir`, sorted by name, links followed. A link that loops or leads
/// nowhere is an error naming it.
pub fn list(dir: &Path) -> Result<Vec<Entry>, InputError> {
    let listing = std::fs::read_dir(dir).map_err(|e| InputError::io(dir, e))?;
    let mut entries = Vec::new();
    for entry in listing {
        let path = entry.map_err(|e| InputError::io(dir, e))?.path();
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => return Err(unreachable_entry(path, e)),
        };
        let kind = if meta.is_file() {
            EntryKind::File
        } else if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other(file_kind(&meta))
        };
        let id = (meta.dev(), meta.ino());
        entries.push(Entry { path, kind, id });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// The subdirectories of `dir`, sorted by name (links followed). One that is `dir`
/// itself or a directory above it, or the same directory as an earlier one, is a loop:
/// an error naming both.
pub fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let mut seen: HashMap<(u64, u64), PathBuf> = ancestors(dir)?;
    let mut dirs = Vec::new();
    for entry in list(dir)? {
        if entry.kind != EntryKind::Dir {
            continue;
        }
        if let Some(first) = seen.get(&entry.id) {
            return Err(InputError::Loop {
                why: format!(
                    "is the same directory as {} (a link loop): sat would read it twice",
                    first.display()
                ),
                path: entry.path,
            });
        }
        seen.insert(entry.id, entry.path.clone());
        dirs.push(entry.path);
    }
    Ok(dirs)
}

/// `dir` and every directory above it (its real path), by device and inode.
fn ancestors(dir: &Path) -> Result<HashMap<(u64, u64), PathBuf>, InputError> {
    let real = std::fs::canonicalize(dir).map_err(|e| InputError::io(dir, e))?;
    let mut ids = HashMap::new();
    for up in real.ancestors() {
        let meta = std::fs::metadata(up).map_err(|e| InputError::io(up, e))?;
        ids.insert((meta.dev(), meta.ino()), up.to_path_buf());
    }
    Ok(ids)
}

fn unreachable_entry(path: PathBuf, e: std::io::Error) -> InputError {
    let why = if e.raw_os_error() == Some(libc::ELOOP) {
        "is a symbolic link that loops back on itself".to_string()
    } else if e.kind() == std::io::ErrorKind::NotFound {
        "is a symbolic link to nothing".to_string()
    } else {
        return InputError::io(path, e);
    };
    InputError::Loop { path, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn entries_are_sorted_and_typed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a.png"), "x").unwrap();
        let kinds: Vec<(String, EntryKind)> = list(dir.path())
            .unwrap()
            .into_iter()
            .map(|e| (e.path.file_name().unwrap().to_string_lossy().into(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("a.png".into(), EntryKind::File),
                ("b".into(), EntryKind::Dir)
            ]
        );
        assert_eq!(subdirectories(dir.path()).unwrap(), [dir.path().join("b")]);
    }

    #[test]
    fn link_loops_and_dangling_links_are_named() {
        let dir = tempfile::tempdir().unwrap();
        symlink(dir.path().join("y"), dir.path().join("x")).unwrap();
        symlink(dir.path().join("x"), dir.path().join("y")).unwrap();
        let e = subdirectories(dir.path()).unwrap_err().to_string();
        assert!(e.contains("loops back"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        symlink(dir.path().join("gone"), dir.path().join("cat")).unwrap();
        let e = list(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cat: is a symbolic link to nothing"), "{e}");
    }

    #[test]
    fn a_directory_reached_twice_or_above_is_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train");
        std::fs::create_dir_all(train.join("cat")).unwrap();
        symlink(&train, train.join("dog")).unwrap();
        let e = subdirectories(&train).unwrap_err().to_string();
        assert!(e.contains("dog") && e.contains("link loop"), "{e}");

        std::fs::remove_file(train.join("dog")).unwrap();
        symlink(train.join("cat"), train.join("dog")).unwrap();
        let e = subdirectories(&train).unwrap_err().to_string();
        assert!(
            e.contains("dog: is the same directory as") && e.contains("cat"),
            "{e}"
        );
    }
}
