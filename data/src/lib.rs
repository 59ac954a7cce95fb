//! Datasets: images in `[0, 1]` with labels and, where the format has them, boxes and masks.
//!
//! A split is [`Data`]: either decoded whole into memory ([`Dataset`], for small sets:
//! every format's reader lists its split as a [`catalogue::Catalogue`] and decodes it),
//! or a packed dataset of tar shards read as a stream ([`stream::ShardSource`]: read,
//! decoded and augmented by worker threads while the model trains). Both hand out the
//! same [`Samples`]; the epoch's order and augmentation are in [`epoch`], [`augment`]
//! and [`stream`], packing in [`shards::pack`].
pub mod assemble;
pub mod augment;
pub mod catalogue;
pub mod cifar;
pub mod config;
pub mod decode;
pub mod epoch;
pub mod error;
pub mod flowers17;
pub mod image_folder;
pub mod imagenet;
pub mod jpeg;
pub mod loader;
pub mod progress;
pub mod resize;
pub mod rng;
pub mod shapes;
pub mod shards;
pub mod stop;
pub mod stream;
pub mod tiny_imagenet;

use config::DataConfig;
pub use error::DataError;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// The dataset names `[data] dataset` accepts.
pub const DATASETS: [&str; 8] = [
    "shapes",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
    "flowers17",
    "image-folder",
    "imagenet",
    "shards",
];

/// A split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images.
    Train,
    /// Test images (Tiny ImageNet: its labelled validation set).
    Test,
}

/// The listing of `split` of the dataset format `format` under `root`: what the
/// in-memory readers decode and `sat-host data pack` packs.
pub fn catalogue(
    format: &str,
    root: &std::path::Path,
    split: Split,
    config: &DataConfig,
) -> Result<catalogue::Catalogue, DataError> {
    let mut catalogue = match format {
        "cifar10" => cifar::catalogue(root, split, None)?,
        "cifar100" => cifar::catalogue(root, split, Some(config.cifar100_labels))?,
        "tiny-imagenet" => tiny_imagenet::catalogue(root, split)?,
        "flowers17" => flowers17::catalogue(root, split)?,
        "image-folder" => image_folder::catalogue(root, split)?,
        "imagenet" => imagenet::catalogue(root, split)?,
        other => {
            return Err(DataError::Config(format!(
                "`{other}` is not a dataset format read from files; accepted: cifar10, cifar100, tiny-imagenet, flowers17, image-folder, imagenet"
            )))
        }
    };
    catalogue.apply_missing_masks(config.missing_masks);
    Ok(catalogue)
}

/// The sorted indices of the seeded `train_size` (or `test_size`) subset of a split of
/// `len` samples; `None` when the whole split is used.
pub fn chosen_subset(config: &DataConfig, len: usize, split: Split, seed: u64) -> Option<Vec<i64>> {
    let limit = match split {
        Split::Train => config.train_size,
        Split::Test => config.test_size,
    }?;
    (limit < len).then(|| {
        let stream = if split == Split::Train { 2 } else { 3 };
        let mut chosen = rng::SplitMix::new(seed, stream).permutation(len)[..limit].to_vec();
        chosen.sort_unstable();
        chosen
    })
}

/// The training and test sets `config` describes; `seed` drives generation (`shapes`)
/// and the choice of a `train_size`/`test_size` subset of a real dataset.
pub fn load(config: &DataConfig, seed: u64) -> Result<(Data, Data), DataError> {
    let size = config.image_size;
    if !(8..=1024).contains(&size) {
        return Err(DataError::Config(format!(
            "[data] image_size must be between 8 and 1024, got {size}"
        )));
    }
    let root = || -> Result<&std::path::Path, DataError> {
        match &config.root {
            Some(r) => Ok(r.as_path()),
            None => Err(DataError::Config(format!(
                "[data] root: dataset `{}` needs the directory that holds its files",
                config.dataset
            ))),
        }
    };
    let subset = |len: usize, which: Split| chosen_subset(config, len, which, seed);
    let split = |which: Split| -> Result<Data, DataError> {
        let full = match config.dataset.as_str() {
            "shapes" => {
                let count = match which {
                    Split::Train => config.train_size.unwrap_or(4000),
                    Split::Test => config.test_size.unwrap_or(1000),
                };
                let stream = if which == Split::Train { 0 } else { 1 };
                return shapes::generate_until(
                    count,
                    size,
                    config.classes,
                    seed,
                    stream,
                    &stop::requested,
                )
                .map_err(DataError::Config)?
                .map(Data::Memory)
                .ok_or_else(|| stop::interrupted("shapes"));
            }
            "shards" => {
                let source = stream::ShardSource::open(config, root()?, which, seed)?;
                return Ok(Data::Shards(Arc::new(source)));
            }
            "cifar10" => cifar::cifar10(root()?, which)?,
            "cifar100" => cifar::cifar100(root()?, which, config.cifar100_labels)?,
            format => {
                // Only the chosen subset is decoded (the same samples as choosing after).
                let mut listed = catalogue(format, root()?, which, config)?;
                if let Some(chosen) = subset(listed.entries.len(), which) {
                    let mut keep = chosen.into_iter().peekable();
                    let mut i = 0i64;
                    listed.entries.retain(|_| {
                        let kept = keep.next_if_eq(&i).is_some();
                        i += 1;
                        kept
                    });
                }
                return Ok(Data::Memory(listed.decode(size, config.resize_masks)?));
            }
        };
        let full = full.resized(size);
        Ok(Data::Memory(match subset(full.len() as usize, which) {
            Some(chosen) => full.subset(&Tensor::from_slice(&chosen)),
            None => full,
        }))
    };
    // A stop requested before or between the splits (`shapes` also asks every few
    // images, a streamed split at every batch it waits for).
    stop::check(&config.dataset)?;
    let train = split(Split::Train)?;
    stop::check(&config.dataset)?;
    let test = split(Split::Test)?;
    if train.is_empty() || test.is_empty() {
        return Err(DataError::Config(format!(
            "dataset `{}` has {} training and {} test images; both must be non-empty",
            config.dataset,
            train.len(),
            test.len()
        )));
    }
    if test.num_classes() != train.num_classes() {
        return Err(DataError::Config(format!(
            "the training split has {} classes and the test split {}",
            train.num_classes(),
            test.num_classes()
        )));
    }
    Ok((train, test))
}

/// One split of a dataset: decoded in memory, or streamed from shards.
pub enum Data {
    /// Decoded whole into memory.
    Memory(Dataset),
    /// Read from tar shards as it is used.
    Shards(Arc<stream::ShardSource>),
}

/// Index batches of at most `batch_size` over `limit` of `len` samples spread evenly
/// (all if 0): sample i of the n chosen is i·len/n, so class-sorted sets stay balanced
/// and n = len gives every sample.
pub fn spread_batches(len: i64, limit: usize, batch_size: usize) -> Vec<Tensor> {
    let n = if limit == 0 {
        len
    } else {
        (limit as i64).min(len)
    };
    let step = batch_size.max(1) as i64;
    (0..n)
        .step_by(step as usize)
        .map(|start| {
            (Tensor::arange_start(start, (start + step).min(n), (Kind::Int64, Device::Cpu)) * len)
                .floor_divide_scalar(n)
        })
        .collect()
}

impl Data {
    /// Number of samples.
    pub fn len(&self) -> i64 {
        match self {
            Data::Memory(d) => d.len(),
            Data::Shards(s) => s.len() as i64,
        }
    }
    /// Whether it has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        match self {
            Data::Memory(d) => &d.class_names,
            Data::Shards(s) => s.class_names(),
        }
    }
    /// Number of classes.
    pub fn num_classes(&self) -> i64 {
        self.class_names().len() as i64
    }
    /// The in-memory dataset, if it is one.
    pub fn in_memory(&self) -> Option<&Dataset> {
        match self {
            Data::Memory(d) => Some(d),
            Data::Shards(_) => None,
        }
    }
    /// See [`spread_batches`].
    pub fn spread_batches(&self, limit: usize, batch_size: usize) -> Vec<Tensor> {
        spread_batches(self.len(), limit, batch_size)
    }
    /// The samples at `index` (int64 CPU tensor), unaugmented, images and masks as
    /// float32 in `[0, 1]`.
    pub fn select(&self, index: &Tensor) -> Result<Samples, DataError> {
        match self {
            Data::Memory(d) => Ok(d.select(index)),
            Data::Shards(s) => {
                let indices =
                    Vec::<i64>::try_from(index).map_err(|e| DataError::Config(e.to_string()))?;
                let mut batches = stream::evaluation(s.clone(), vec![indices]);
                let samples = batches.next().expect("one batch")?.into_samples();
                Ok(samples.to(Device::Cpu))
            }
        }
    }
    /// The samples of each of `batches` in turn, unaugmented (read ahead by workers
    /// when streamed).
    pub fn batches(&self, batches: Vec<Tensor>) -> Batches<'_> {
        match self {
            Data::Memory(d) => Batches::Memory(d, batches.into_iter()),
            Data::Shards(s) => {
                let indices = batches
                    .iter()
                    .map(|t| {
                        let flat = t.to_kind(Kind::Int64).to_device(Device::Cpu).flatten(0, -1);
                        Vec::<i64>::try_from(&flat).expect("a flat int64 CPU tensor converts")
                    })
                    .collect();
                Batches::Shards(stream::evaluation(s.clone(), indices))
            }
        }
    }
    /// This rank's training batches of one epoch, augmented.
    pub fn epoch<'a>(&'a self, config: &DataConfig, plan: stream::EpochPlan) -> Epoch<'a> {
        match self {
            Data::Memory(d) => {
                let mut batches =
                    epoch::EpochBatches::new(d, config, plan.batch_size, plan.seed, plan.epoch)
                        .shard(plan.rank, plan.world);
                let count = batches.batch_count();
                // The crops are drawn in sequence: a resumed epoch draws the skipped ones.
                for _ in 0..plan.start_batch.min(count) {
                    batches.next();
                }
                Epoch::Memory(batches, Duration::ZERO)
            }
            Data::Shards(s) => Epoch::Shards(stream::ShardEpoch::new(s.clone(), plan)),
        }
    }
}

/// The evaluation batches of [`Data::batches`].
pub enum Batches<'a> {
    /// Selected from memory as they are asked for.
    Memory(&'a Dataset, std::vec::IntoIter<Tensor>),
    /// Read ahead by workers.
    Shards(loader::Loader<stream::RawBatch>),
}

impl Iterator for Batches<'_> {
    type Item = Result<Samples, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Batches::Memory(d, it) => it.next().map(|index| Ok(d.select(&index))),
            Batches::Shards(loader) => loader.next().map(|r| r.map(stream::RawBatch::into_samples)),
        }
    }
}

/// One epoch's training batches, from memory or from shards.
pub enum Epoch<'a> {
    /// In memory, made as they are asked for (the time spent counts as data wait).
    Memory(epoch::EpochBatches<'a>, Duration),
    /// Streamed, made ahead by workers.
    Shards(stream::ShardEpoch),
}

impl Epoch<'_> {
    /// Batches in the epoch.
    pub fn batch_count(&self) -> usize {
        match self {
            Epoch::Memory(b, _) => b.batch_count(),
            Epoch::Shards(s) => s.batch_count(),
        }
    }
    /// A digest of the epoch's order and augmentation.
    pub fn digest(&self) -> String {
        match self {
            Epoch::Memory(b, _) => b.digest(),
            Epoch::Shards(s) => s.digest(),
        }
    }
    /// The time the consumer waited for batches so far.
    pub fn waited(&self) -> Duration {
        match self {
            Epoch::Memory(_, waited) => *waited,
            Epoch::Shards(s) => s.waited(),
        }
    }
    /// Samples left out as corrupt so far.
    pub fn skipped(&self) -> usize {
        match self {
            Epoch::Memory(..) => 0,
            Epoch::Shards(s) => s.skipped().len(),
        }
    }
}

impl Iterator for Epoch<'_> {
    type Item = Result<Samples, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Epoch::Memory(batches, waited) => {
                let start = std::time::Instant::now();
                let next = batches.next();
                *waited += start.elapsed();
                next.map(Ok)
            }
            Epoch::Shards(s) => s.next(),
        }
    }
}

/// An in-memory dataset (CPU tensors).
#[derive(Debug)]
pub struct Dataset {
    /// Images `[N, 3, H, W]`: float32 in `[0, 1]`, or uint8 (`0..=255`) for decoded
    /// files; [`Dataset::select`] hands out float32 either way.
    pub images: Tensor,
    /// Labels `[N]`, int64.
    pub labels: Tensor,
    /// Boxes `[N, B, 4]` (`x0, y0, x1, y1`, pixels, half-open; `-1` rows are padding).
    pub boxes: Option<Tensor>,
    /// Masks `[N, 1, H, W]` (float32 in `[0, 1]`, or uint8 with `255` = object) and
    /// presence flags `[N]`.
    pub masks: Option<(Tensor, Tensor)>,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

/// A slice of a dataset, on a device.
pub struct Samples {
    /// Images.
    pub images: Tensor,
    /// Labels.
    pub labels: Tensor,
    /// Boxes.
    pub boxes: Option<Tensor>,
    /// Masks and presence flags.
    pub masks: Option<(Tensor, Tensor)>,
    /// The samples' indices in their split (`[N]` int64, CPU), which key their random
    /// draws (see `sat_core::draw`); `None` where unknown.
    pub ids: Option<Tensor>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }
    /// Whether it has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes.
    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }
    /// The samples at `index` (int64 CPU tensor), images and masks as float32 in `[0, 1]`.
    pub fn select(&self, index: &Tensor) -> Samples {
        Samples {
            images: unit_float(self.images.index_select(0, index)),
            labels: self.labels.index_select(0, index),
            ids: Some(index.to_kind(Kind::Int64)),
            boxes: self.boxes.as_ref().map(|b| b.index_select(0, index)),
            masks: self.masks.as_ref().map(|(m, p)| {
                (
                    unit_float(m.index_select(0, index)),
                    p.index_select(0, index),
                )
            }),
        }
    }

    /// The dataset restricted to `index`, in the stored kinds.
    pub fn subset(&self, index: &Tensor) -> Dataset {
        Dataset {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
            boxes: self.boxes.as_ref().map(|b| b.index_select(0, index)),
            masks: self
                .masks
                .as_ref()
                .map(|(m, p)| (m.index_select(0, index), p.index_select(0, index))),
            class_names: self.class_names.clone(),
        }
    }

    /// The dataset at side `size` (bilinear images, nearest masks, scaled boxes); itself
    /// when it already has that size.
    pub fn resized(self, size: i64) -> Dataset {
        let (h, w) = (self.images.size()[2], self.images.size()[3]);
        if (h, w) == (size, size) {
            return self;
        }
        let resize = |t: &Tensor, mode_bilinear: bool| {
            let kind = t.kind();
            let f = t.to_kind(Kind::Float);
            let r = if mode_bilinear {
                f.upsample_bilinear2d([size, size], false, None, None)
            } else {
                f.upsample_nearest2d([size, size], None, None)
            };
            if kind == Kind::Uint8 {
                r.round().clamp(0.0, 255.0).to_kind(Kind::Uint8)
            } else {
                r.to_kind(kind)
            }
        };
        let scale = Tensor::from_slice(&[
            size as f32 / w as f32,
            size as f32 / h as f32,
            size as f32 / w as f32,
            size as f32 / h as f32,
        ]);
        Dataset {
            images: resize(&self.images, true),
            labels: self.labels,
            boxes: self.boxes.map(|b| {
                let valid = b.select(2, 2).gt_tensor(&b.select(2, 0)).unsqueeze(-1);
                (&b * &scale).where_self(&valid, &b)
            }),
            masks: self.masks.map(|(m, p)| (resize(&m, false), p)),
            class_names: self.class_names,
        }
    }
}

/// Float32 in `[0, 1]` from float32 or uint8 (`/ 255`).
fn unit_float(t: Tensor) -> Tensor {
    if t.kind() == Kind::Uint8 {
        t.to_kind(Kind::Float) / 255.0
    } else {
        t
    }
}

impl Samples {
    /// Moves everything to `device`; `uint8` images and masks (as streamed) become
    /// float32 in `[0, 1]` there. To CUDA, CPU tensors are copied from pinned memory
    /// without blocking the host.
    pub fn to(self, device: Device) -> Self {
        let move_to = |t: Tensor| {
            if device.is_cuda() && t.device() == Device::Cpu {
                t.pin_memory(device)
                    .to_device_(device, t.kind(), true, false)
            } else {
                t.to_device(device)
            }
        };
        Self {
            images: unit_float(move_to(self.images)),
            labels: move_to(self.labels),
            boxes: self.boxes.map(move_to),
            masks: self
                .masks
                .map(|(m, p)| (unit_float(move_to(m)), move_to(p))),
            ids: self.ids,
        }
    }
    /// The core batch over these samples, its random draws keyed by `seed` and the
    /// samples' indices (when known), so a sample draws the same in any batch, on any
    /// rank.
    pub fn keyed_batch(
        &self,
        seed: u64,
        epoch: u32,
        epochs: u32,
        phase: sat_core::Phase,
    ) -> sat_core::Batch {
        let batch = self.batch(epoch, epochs, phase);
        match &self.ids {
            Some(ids) => batch.with_draws(seed, ids),
            None => batch,
        }
    }
    /// The core batch over these samples.
    pub fn batch(&self, epoch: u32, epochs: u32, phase: sat_core::Phase) -> sat_core::Batch {
        let mut batch = sat_core::Batch::new(&self.images, &self.labels, epoch, epochs, phase);
        if let Some(b) = &self.boxes {
            batch = batch.with_boxes(b);
        }
        if let Some((m, p)) = &self.masks {
            batch = batch.with_masks(m, p);
        }
        batch
    }
}

/// Cases per property test of the readers and the config parser: `default`, or
/// `SAT_FUZZ_CASES` for a long fuzzing run (see docs/RELIABILITY.md).
#[doc(hidden)]
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("SAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
