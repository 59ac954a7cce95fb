//! Datasets packed into WebDataset-style tar shards, read sample by sample.
//!
//! A packed dataset is a directory (or an `http://` URL) holding:
//! - `manifest.json` ([`Manifest`]): the classes, which annotations the samples carry,
//!   and per split the shards with their sample counts, sizes and SHA-256 digests;
//! - `<split>/NNNNNN.tar`: POSIX tar files in which each sample's files sit side by side
//!   under one key: `KEY.jpg` or `KEY.png`, `KEY.cls` (the class index in ASCII), and
//!   optionally `KEY.boxes.json` (`{"size": [w, h], "boxes": [[x0, y0, x1, y1], …]}`,
//!   pixels of a `w × h` image) and `KEY.mask.png` (grey, 255 = object);
//! - `<split>/NNNNNN.idx.json` ([`ShardIndex`]): each sample's key, and the offset and
//!   length of its members in the tar, so that one read fetches one sample.
//!
//! [`ShardSet`] reads one split. Shard indexes are loaded when a shard is first read,
//! so opening costs the manifest alone and memory holds 12 bytes per sample read so far,
//! whatever the dataset's size.
pub mod pack;
pub mod sample;
pub mod store;
pub mod tar;

use crate::assemble::Annotations;
use crate::error::DataError;
use crate::Split;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
pub use store::Store;

/// The `format` field of a manifest.
pub const FORMAT: &str = "sat-shards";
/// The manifest version this build reads and writes.
pub const VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// Largest shard index read.
const MAX_INDEX_BYTES: u64 = 256 << 20;
/// Largest sample (all its files) read.
pub const MAX_SAMPLE_BYTES: u64 = 256 << 20;

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The format the samples were packed from (`image-folder`, `imagenet`, …).
    pub source: String,
    /// The shorter side the images were resized to when packed (`None`: as they were).
    pub resize: Option<u32>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Which annotations the samples carry.
    pub annotations: AnnotationFlags,
    /// The splits (`train`, `test`).
    pub splits: BTreeMap<String, SplitManifest>,
}

/// Which annotations the samples of a packed dataset carry.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotationFlags {
    /// `KEY.boxes.json` (on the samples that have boxes).
    pub boxes: bool,
    /// `KEY.mask.png` (on the samples that have masks).
    pub masks: bool,
}

/// One split of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitManifest {
    /// Samples in all its shards.
    pub samples: u64,
    /// Its shards, in order.
    pub shards: Vec<ShardEntry>,
}

/// One shard of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The tar file, relative to the dataset's root.
    pub tar: String,
    /// Its index, relative to the dataset's root.
    pub index: String,
    /// Samples in it.
    pub samples: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of the tar file, hex.
    pub sha256: String,
}

/// `NNNNNN.idx.json`: each sample's key, and where its members are in the tar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardIndex {
    /// `(key, offset of the first member's header, bytes through the last member's
    /// padded data)` per sample, in tar order.
    pub samples: Vec<(String, u64, u64)>,
}

/// `bytes` as JSON of `T`; an error names `at` (path or URL), line and column.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], at: &str) -> Result<T, DataError> {
    serde_json::from_slice(bytes).map_err(|e| {
        DataError::record(
            Path::new(at),
            format!("line {}, column {}", e.line(), e.column()),
            e.to_string(),
        )
    })
}

/// The split's name in a manifest.
pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "test",
    }
}

/// A relative path inside the dataset: no absolute path, no `..`, no empty part.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != ".." && p != ".")
}

impl Manifest {
    /// Reads and checks the manifest of `store`.
    pub fn read(store: &Store) -> Result<Manifest, DataError> {
        let bytes = store.read_all(MANIFEST, MAX_MANIFEST_BYTES)?;
        let at = store.name(MANIFEST);
        let manifest: Manifest = parse_json(&bytes, &at)?;
        manifest
            .check()
            .map_err(|m| DataError::format(Path::new(&at), m))?;
        Ok(manifest)
    }

    /// The manifest's own consistency: format, version, counts, paths.
    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format `{}` is not `{FORMAT}`", self.format));
        }
        if self.version != VERSION {
            return Err(format!(
                "version {} is not the version {VERSION} this sat reads; pack the dataset again",
                self.version
            ));
        }
        if self.classes.is_empty() {
            return Err("no classes".into());
        }
        for (name, split) in &self.splits {
            let sum: u64 = split.shards.iter().map(|s| s.samples).sum();
            if sum != split.samples {
                return Err(format!(
                    "split `{name}` counts {} samples but its shards {sum}",
                    split.samples
                ));
            }
            for shard in &split.shards {
                if !safe_relative(&shard.tar) || !safe_relative(&shard.index) {
                    return Err(format!(
                        "shard paths `{}` and `{}` must be relative paths inside the dataset",
                        shard.tar, shard.index
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where a shard's samples are, once read: offsets and lengths.
struct Located {
    offsets: Vec<u64>,
    lengths: Vec<u32>,
}

/// One split of a packed dataset, read sample by sample.
pub struct ShardSet {
    store: Store,
    /// The manifest.
    pub manifest: Manifest,
    shards: Vec<ShardEntry>,
    /// The global index of each shard's first sample, and the total at the end.
    starts: Vec<u64>,
    located: Vec<Mutex<Option<Arc<Located>>>>,
}

/// One sample's files, as stored.
pub struct RawSample {
    /// The key.
    pub key: String,
    /// The encoded image (JPEG or PNG).
    pub image: Vec<u8>,
    /// The class index.
    pub label: i64,
    /// `KEY.boxes.json`, when present.
    pub boxes: Option<Vec<u8>>,
    /// `KEY.mask.png`, when present.
    pub mask: Option<Vec<u8>>,
}

impl ShardSet {
    /// Opens `split` of the packed dataset at `root` (a directory or an `http://` URL).
    pub fn open(root: &Path, split: Split) -> Result<ShardSet, DataError> {
        let store = Store::parse(root)?;
        let manifest = Manifest::read(&store)?;
        let name = split_name(split);
        let shards = manifest
            .splits
            .get(name)
            .ok_or_else(|| {
                DataError::format(
                    Path::new(&store.name(MANIFEST)),
                    format!(
                        "no `{name}` split (it has: {})",
                        manifest
                            .splits
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?
            .shards
            .clone();
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0u64;
        for s in &shards {
            starts.push(total);
            total += s.samples;
        }
        starts.push(total);
        Ok(ShardSet {
            store,
            located: shards.iter().map(|_| Mutex::new(None)).collect(),
            manifest,
            shards,
            starts,
        })
    }

    /// Samples in the split.
    pub fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0) as usize
    }

    /// Whether the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample counts of the shards, in order.
    pub fn shard_sizes(&self) -> Vec<u64> {
        self.shards.iter().map(|s| s.samples).collect()
    }

    /// Which annotations the samples carry.
    pub fn annotations(&self) -> Annotations {
        Annotations {
            boxes: self.manifest.annotations.boxes,
            masks: self.manifest.annotations.masks,
        }
    }

    /// The shard and position in it of global sample `index`.
    fn locate(&self, index: usize) -> (usize, usize) {
        let shard = self.starts.partition_point(|&s| s <= index as u64) - 1;
        (shard, index - self.starts[shard] as usize)
    }

    /// The path or URL of shard `shard`'s tar, for messages.
    pub fn shard_name(&self, shard: usize) -> String {
        self.store.name(&self.shards[shard].tar)
    }

    /// The path or URL of the shard that holds global sample `index`.
    pub fn shard_name_of(&self, index: usize) -> String {
        self.shard_name(self.locate(index).0)
    }

    /// The index of shard `shard`, checked against the manifest.
    pub fn index(&self, shard: usize) -> Result<ShardIndex, DataError> {
        let entry = &self.shards[shard];
        let at = self.store.name(&entry.index);
        let bytes = self.store.read_all(&entry.index, MAX_INDEX_BYTES)?;
        let index: ShardIndex = parse_json(&bytes, &at)?;
        let mismatch = |m: String| {
            DataError::format(
                Path::new(&self.shard_name(shard)),
                format!("{m}: the manifest does not match its shards; pack the dataset again"),
            )
        };
        if index.samples.len() as u64 != entry.samples {
            return Err(mismatch(format!(
                "its index lists {} samples, the manifest {}",
                index.samples.len(),
                entry.samples
            )));
        }
        if let Some(size) = self.store.size(&entry.tar)? {
            if size != entry.bytes {
                return Err(mismatch(format!(
                    "{size} bytes, the manifest says {}",
                    entry.bytes
                )));
            }
        }
        for (key, offset, length) in &index.samples {
            if *length > MAX_SAMPLE_BYTES || offset.saturating_add(*length) > entry.bytes {
                return Err(mismatch(format!(
                    "sample `{key}` lies outside the shard's {} bytes",
                    entry.bytes
                )));
            }
        }
        Ok(index)
    }

    /// Offsets and lengths of shard `shard`, read once.
    fn located(&self, shard: usize) -> Result<Arc<Located>, DataError> {
        let mut slot = self.located[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_ref() {
            return Ok(l.clone());
        }
        let index = self.index(shard)?;
        let located = Arc::new(Located {
            offsets: index.samples.iter().map(|s| s.1).collect(),
            lengths: index.samples.iter().map(|s| s.2 as u32).collect(),
        });
        *slot = Some(located.clone());
        Ok(located)
    }

    /// The files of global sample `index`. An error names the shard and, once the
    /// sample's bytes are read, its key.
    pub fn read(&self, index: usize) -> Result<RawSample, DataError> {
        let (shard, local) = self.locate(index);
        let located = self.located(shard)?;
        let (offset, length) = (located.offsets[local], located.lengths[local] as u64);
        let name = self.shard_name(shard);
        let at =
            |key: &str, m: String| DataError::record(Path::new(&name), format!("key `{key}`"), m);
        let span = self
            .store
            .read_range(&self.shards[shard].tar, offset, length)
            .map_err(|m| {
                let key = self
                    .index(shard)
                    .ok()
                    .and_then(|i| i.samples.get(local).map(|s| s.0.clone()))
                    .unwrap_or_else(|| format!("#{local}"));
                at(&key, m)
            })?;
        let members = tar::members(&span).map_err(|m| at(&format!("#{local}"), m))?;
        let key = members
            .first()
            .and_then(|(n, _)| n.split_once('.').map(|(k, _)| k.to_string()))
            .ok_or_else(|| at(&format!("#{local}"), "no member of the form KEY.EXT".into()))?;
        let mut sample = RawSample {
            key: key.clone(),
            image: Vec::new(),
            label: -1,
            boxes: None,
            mask: None,
        };
        for (member, data) in members {
            let Some(ext) = member.strip_prefix(&key).and_then(|r| r.strip_prefix('.')) else {
                return Err(at(&key, format!("member `{member}` belongs to another key: the index does not match the shard")));
            };
            match ext {
                "jpg" | "jpeg" | "png" => sample.image = data.to_vec(),
                "cls" => {
                    let text = std::str::from_utf8(data).unwrap_or("").trim();
                    sample.label = text
                        .parse::<i64>()
                        .ok()
                        .filter(|&l| (0..self.manifest.classes.len() as i64).contains(&l))
                        .ok_or_else(|| {
                            at(
                                &key,
                                format!(
                                    "`{key}.cls` holds `{}`, not a class index below {}",
                                    text.chars().take(40).collect::<String>(),
                                    self.manifest.classes.len()
                                ),
                            )
                        })?;
                }
                "boxes.json" => sample.boxes = Some(data.to_vec()),
                "mask.png" => sample.mask = Some(data.to_vec()),
                _ => {}
            }
        }
        if sample.image.is_empty() {
            return Err(at(&key, "no image (`.jpg`, `.jpeg` or `.png`)".into()));
        }
        if sample.label < 0 {
            return Err(at(&key, format!("no label: `{key}.cls` is missing")));
        }
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside_the_dataset() {
        assert!(safe_relative("train/000000.tar"));
        for bad in [
            "",
            "/etc/passwd",
            "../x.tar",
            "train/../../x",
            "train//x",
            "./x",
        ] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
