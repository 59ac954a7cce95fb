//! The one way sat opens what it reads (configs, images, masks, annotations, state,
//! checkpoints, TorchScript models, metrics, shards).
//!
//! - Only regular files are read: a FIFO, device, socket or directory is refused before
//!   a byte is read (the file is opened with `O_NONBLOCK`, so even opening a FIFO never
//!   waits for a writer).
//! - Every read is bounded by a cap suited to the kind of file ([`Kind::cap`]), checked
//!   against the size `fstat` reports and again while reading, so a file that grows
//!   cannot be read without bound.
//! - Every error names the file.
//!
//! Directory listings ([`list`], [`subdirectories`]) report links that loop or lead
//! nowhere, and a directory that is the same as one already walked, instead of skipping
//! them without a word.
mod error;
mod listing;
mod open;

pub use error::InputError;
pub use listing::{list, subdirectories, Entry, EntryKind};
pub use open::{open, read, read_text, Input};

/// What a file is to sat; sets the most bytes sat reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TOML config (a run's `config.toml`, `--config`).
    Config,
    /// An encoded image (JPEG, PNG) or a mask.
    Image,
    /// A text annotation: box sidecars, label lists, VOC XML, CSV solutions.
    Annotation,
    /// A binary dataset file of records (CIFAR's `.bin` batches).
    Records,
    /// A safetensors file: a checkpoint, a trainer state, teacher weights, an adversarial set.
    Tensors,
    /// A TorchScript model.
    Model,
    /// A JSON report (`metrics.json`, a bench result) or a small marker file.
    Report,
    /// A shard index or manifest (JSON).
    Index,
    /// A shard (tar), read by ranges.
    Shard,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl Kind {
    /// The most bytes a file of this kind may have.
    pub const fn cap(self) -> u64 {
        match self {
            Kind::Config => 16 * MIB,
            Kind::Image => 256 * MIB,
            Kind::Annotation => GIB,
            Kind::Records => 4 * GIB,
            Kind::Tensors | Kind::Model => 64 * GIB,
            Kind::Report => 256 * MIB,
            Kind::Index => GIB,
            Kind::Shard => 1 << 40,
        }
    }

    /// The kind's name in messages.
    pub const fn noun(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Image => "image",
            Kind::Annotation => "annotation",
            Kind::Records => "dataset file",
            Kind::Tensors => "tensor file",
            Kind::Model => "model",
            Kind::Report => "report",
            Kind::Index => "shard index",
            Kind::Shard => "shard",
        }
    }
}

/// A byte count as people read it (`1.5 GiB`, `300 B`).
pub fn human_bytes(bytes: u64) -> String {
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in units {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(300), "300 B");
        assert_eq!(human_bytes(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human_bytes(Kind::Config.cap()), "16.0 MiB");
    }
}
