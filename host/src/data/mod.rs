//! Datasets: images in `[0, 1]` with labels and, where the format has them, boxes and masks.
pub mod augment;
pub mod rng;
pub mod shapes;

use tch::{Device, Tensor};

/// An in-memory dataset (CPU tensors).
pub struct Dataset {
    /// Images `[N, 3, H, W]`, float32 in `[0, 1]`.
    pub images: Tensor,
    /// Labels `[N]`, int64.
    pub labels: Tensor,
    /// Boxes `[N, B, 4]` (`x0, y0, x1, y1`, pixels, half-open; `-1` rows are padding).
    pub boxes: Option<Tensor>,
    /// Masks `[N, 1, H, W]` in `[0, 1]` and presence flags `[N]`.
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
    /// Number of classes.
    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }
    /// The samples at `index` (int64 CPU tensor).
    pub fn select(&self, index: &Tensor) -> Samples {
        Samples {
            images: self.images.index_select(0, index),
            labels: self.labels.index_select(0, index),
            boxes: self.boxes.as_ref().map(|b| b.index_select(0, index)),
            masks: self
                .masks
                .as_ref()
                .map(|(m, p)| (m.index_select(0, index), p.index_select(0, index))),
        }
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
