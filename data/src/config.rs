//! `[data]`: the dataset section of a run's configuration (the host's configuration
//! re-exports it, so that a run's TOML file stays one schema).
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset: `"shapes"` (generated, with boxes and masks), `"cifar10"`, `"cifar100"`,
    /// `"tiny-imagenet"`, `"flowers17"` or `"image-folder"`.
    pub dataset: String,
    /// Directory of a dataset read from files (relative to the working directory).
    pub root: Option<PathBuf>,
    /// Training images: how many `shapes` generates (default 4000), or a seeded subset
    /// of a real dataset (default: all).
    pub train_size: Option<usize>,
    /// Test images, as `train_size` (`shapes` default 1000).
    pub test_size: Option<usize>,
    /// Side of the square images; files of another size are resized.
    pub image_size: i64,
    /// Number of classes of `shapes` (2 to 6).
    pub classes: i64,
    /// CIFAR-100 labels: `"fine"` (100 classes) or `"coarse"` (20).
    pub cifar100_labels: Cifar100Labels,
    /// Samples without a mask in a format with masks: `"keep"` (the `masks` plugin's
    /// `fallback` applies) or `"skip"`.
    pub missing_masks: MissingMasks,
    /// Resize a mask whose size differs from its image's to the image size (default
    /// `false`: such a mask is an error naming the file, since it was most likely made
    /// for another picture or crop).
    pub resize_masks: bool,
    /// Random crop (with this zero padding) and horizontal flip during training.
    pub crop_padding: i64,
    /// Random horizontal flips during training.
    pub flip: bool,
    /// The augmentation recipe of the training images: `"cifar"` (random crop after
    /// zero padding by `crop_padding`, and flip) or `"imagenet"` (random-resized crop to
    /// `image_size` within `crop_scale` and `crop_ratio`, and flip; evaluation images are
    /// resized to `image_size / eval_crop` on the shorter side and centre-cropped).
    /// `"imagenet"` needs a dataset read from shards.
    pub recipe: Recipe,
    /// `"imagenet"` recipe: the range of the crop's area as a share of the image's.
    pub crop_scale: [f64; 2],
    /// `"imagenet"` recipe: the range of the crop's aspect ratio (width / height).
    pub crop_ratio: [f64; 2],
    /// `"imagenet"` recipe: the share of the resized evaluation image that the centre
    /// crop keeps (0.875: 224 out of 256).
    pub eval_crop: f64,
    /// Threads that decode and augment shard samples (default: all cores but one).
    pub workers: Option<usize>,
    /// Batches decoded ahead of the training step (per rank).
    pub prefetch: usize,
    /// Shards per block of the epoch's order: the blocks are permuted, then the samples
    /// inside each block (a block is read from a few shards at a time).
    pub shuffle_block: usize,
    /// A shard sample that cannot be read (corrupt image, missing label, bad box):
    /// `"error"` stops with an error naming the shard and key, `"skip"` leaves it out
    /// and counts it in the log and in `metrics.json`.
    pub on_corrupt: OnCorrupt,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "shapes".into(),
            root: None,
            train_size: None,
            test_size: None,
            image_size: 32,
            classes: 6,
            cifar100_labels: Cifar100Labels::Fine,
            missing_masks: MissingMasks::Keep,
            resize_masks: false,
            crop_padding: 2,
            flip: true,
            recipe: Recipe::Cifar,
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            eval_crop: 0.875,
            workers: None,
            prefetch: 4,
            shuffle_block: 8,
            on_corrupt: OnCorrupt::Error,
        }
    }
}

/// Which CIFAR-100 label a sample gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cifar100Labels {
    /// The 100 fine classes.
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// What to do with a sample whose format has masks but which has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingMasks {
    /// Keep it without a mask: the `masks` plugin's `fallback` decides its map.
    Keep,
    /// Leave it out of the split.
    Skip,
}

/// The augmentation recipe (`[data] recipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// Pad-crop and flip (CIFAR); evaluation images are resized to `image_size`.
    Cifar,
    /// Random-resized crop and flip (ImageNet); resize and centre crop for evaluation.
    Imagenet,
}

/// What a sample that cannot be read does (`[data] on_corrupt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnCorrupt {
    /// Stop with an error naming the shard and the key.
    Error,
    /// Leave the sample out, counted in the log and in `metrics.json`.
    Skip,
}

impl DataConfig {
    /// Decode threads: `workers`, or all cores but one (at least one).
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().saturating_sub(1))
                .unwrap_or(1)
                .max(1)
        })
    }
}
