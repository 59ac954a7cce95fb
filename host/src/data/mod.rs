//! Datasets: images in `[0, 1]` with labels and, where the format has them, boxes and masks.
pub mod assemble;
pub mod augment;
pub mod cifar;
pub mod decode;
pub mod epoch;
pub mod error;
pub mod flowers17;
pub mod image_folder;
pub mod rng;
pub mod shapes;
pub mod tiny_imagenet;

use crate::config::DataConfig;
pub use error::DataError;
use tch::{Device, Kind, Tensor};

/// The dataset names `[data] dataset` accepts.
pub const DATASETS: [&str; 6] = [
    "shapes",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
    "flowers17",
    "image-folder",
];

/// A split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images.
    Train,
    /// Test images (Tiny ImageNet: its labelled validation set).
    Test,
}

/// The training and test sets `config` describes; `seed` drives generation (`shapes`)
/// and the choice of a `train_size`/`test_size` subset of a real dataset.
pub fn load(config: &DataConfig, seed: u64) -> Result<(Dataset, Dataset), DataError> {
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
    let split = |which: Split| -> Result<Dataset, DataError> {
        let full = match config.dataset.as_str() {
            "shapes" => {
                let count = match which {
                    Split::Train => config.train_size.unwrap_or(4000),
                    Split::Test => config.test_size.unwrap_or(1000),
                };
                let stream = if which == Split::Train { 0 } else { 1 };
                return shapes::generate(count, size, config.classes, seed, stream)
                    .map_err(DataError::Config);
            }
            "cifar10" => cifar::cifar10(root()?, which)?,
            "cifar100" => cifar::cifar100(root()?, which, config.cifar100_labels)?,
            "tiny-imagenet" => tiny_imagenet::tiny_imagenet(root()?, which, size)?,
            "flowers17" => flowers17::flowers17(root()?, which, size, config.missing_masks, config.resize_masks)?,
            "image-folder" => {
                image_folder::image_folder(root()?, which, size, config.missing_masks, config.resize_masks)?
            }
            other => {
                return Err(DataError::Config(format!(
                    "[data] dataset: unknown dataset `{other}`{}; accepted: {}",
                    crate::config::suggest::did_you_mean(other, DATASETS),
                    DATASETS.join(", ")
                )))
            }
        };
        let full = full.resized(size);
        let limit = match which {
            Split::Train => config.train_size,
            Split::Test => config.test_size,
        };
        Ok(match limit {
            Some(n) if (n as i64) < full.len() => {
                let stream = if which == Split::Train { 2 } else { 3 };
                let order = rng::SplitMix::new(seed, stream).permutation(full.len() as usize);
                let mut chosen = order[..n].to_vec();
                chosen.sort_unstable();
                full.subset(&Tensor::from_slice(&chosen))
            }
            _ => full,
        })
    };
    let train = split(Split::Train)?;
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
            boxes: self.boxes.as_ref().map(|b| b.index_select(0, index)),
            masks: self.masks.as_ref().map(|(m, p)| {
                (
                    unit_float(m.index_select(0, index)),
                    p.index_select(0, index),
                )
            }),
        }
    }

    /// Index batches (int64 CPU tensors of at most `batch_size` entries) over `limit`
    /// samples spread evenly over the dataset (all if 0): sample i of the n chosen is
    /// i·len/n, so class-sorted sets stay balanced and n = len gives every sample.
    pub fn spread_batches(&self, limit: usize, batch_size: usize) -> Vec<Tensor> {
        let len = self.len();
        let n = if limit == 0 {
            len
        } else {
            (limit as i64).min(len)
        };
        let step = batch_size.max(1) as i64;
        (0..n)
            .step_by(step as usize)
            .map(|start| {
                (Tensor::arange_start(start, (start + step).min(n), (Kind::Int64, Device::Cpu))
                    * len)
                    .floor_divide_scalar(n)
            })
            .collect()
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
    /// Moves everything to `device`.
    pub fn to(self, device: Device) -> Self {
        Self {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            boxes: self.boxes.map(|b| b.to_device(device)),
            masks: self
                .masks
                .map(|(m, p)| (m.to_device(device), p.to_device(device))),
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
