//! The training or evaluation batch handed to saliency sources and attacks.
use crate::draw::{DrawKeys, Draws};
use crate::tensor::{RTensor, TensorRef};
use abi_stable::{std_types::ROption, StableAbi};
use tch::Tensor;

/// Why a batch is being processed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Making training inputs.
    Training,
    /// Measuring robustness.
    Evaluation,
    /// Rendering pictures (`sat-host saliency`).
    Inspection,
}

/// A batch of images with their labels and the annotations the dataset has, all aligned
/// with the (augmented) images and on the same device.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct Batch {
    /// Images `[N, C, H, W]`, float32 in `[0, 1]` (no normalisation).
    pub images: RTensor,
    /// Labels `[N]`, int64.
    pub labels: RTensor,
    /// Boxes `[N, B, 4]`, float32 `(x0, y0, x1, y1)` in pixels of the image as handed
    /// over, half-open `[x0, x1) × [y0, y1)`; rows of `-1` are padding.
    pub boxes: ROption<RTensor>,
    /// Foreground masks `[N, 1, H, W]`, float32 in `[0, 1]`.
    pub masks: ROption<RTensor>,
    /// Which samples have a real mask, `[N]` bool (others hold zeros in `masks`).
    pub mask_present: ROption<RTensor>,
    /// Saliency maps `[N, 1 or C, H, W]` in `[-1, 1]`, when the host computed them
    /// for an attack that needs them.
    pub saliency: ROption<RTensor>,
    /// 0-based epoch.
    pub epoch: u32,
    /// Total number of epochs of the run.
    pub epochs: u32,
    /// Why this batch is processed.
    pub phase: Phase,
    /// What keys the batch's random draws (see [`crate::draw`]): given by the host, so a
    /// sample's draws do not depend on the batch or the rank it is in.
    pub draws: ROption<DrawKeys>,
}

impl Batch {
    /// A batch of images and labels (shallow clones; no data copied), without annotations.
    pub fn new(images: &Tensor, labels: &Tensor, epoch: u32, epochs: u32, phase: Phase) -> Self {
        Self {
            images: RTensor::from_ref(images),
            labels: RTensor::from_ref(labels),
            boxes: ROption::RNone,
            masks: ROption::RNone,
            mask_present: ROption::RNone,
            saliency: ROption::RNone,
            epoch,
            epochs,
            phase,
            draws: ROption::RNone,
        }
    }
    /// Keys the batch's random draws by the run's `seed` and the samples' global indices
    /// (`[N]` int64, CPU).
    pub fn with_draws(mut self, seed: u64, samples: &Tensor) -> Self {
        self.draws = ROption::RSome(DrawKeys {
            seed,
            samples: RTensor::from_ref(samples),
        });
        self
    }
    /// The batch's random draws: keyed by sample when the host gave keys, else
    /// libtorch's generator.
    pub fn draws(&self) -> Draws<'_> {
        Draws::new(self.draws.as_ref().into_option(), self.epoch)
    }
    /// Adds boxes `[N, B, 4]`.
    pub fn with_boxes(mut self, boxes: &Tensor) -> Self {
        self.boxes = ROption::RSome(RTensor::from_ref(boxes));
        self
    }
    /// Adds masks `[N, 1, H, W]` and the per-sample presence flags `[N]`.
    pub fn with_masks(mut self, masks: &Tensor, present: &Tensor) -> Self {
        self.masks = ROption::RSome(RTensor::from_ref(masks));
        self.mask_present = ROption::RSome(RTensor::from_ref(present));
        self
    }
    /// Adds saliency maps.
    pub fn with_saliency(mut self, saliency: &Tensor) -> Self {
        self.saliency = ROption::RSome(RTensor::from_ref(saliency));
        self
    }
    /// The images.
    pub fn images(&self) -> TensorRef<'_> {
        self.images.view()
    }
    /// The labels.
    pub fn labels(&self) -> TensorRef<'_> {
        self.labels.view()
    }
    /// The boxes, if the dataset has them.
    pub fn boxes(&self) -> Option<TensorRef<'_>> {
        self.boxes.as_ref().into_option().map(RTensor::view)
    }
    /// The masks and their presence flags, if the dataset has them.
    pub fn masks(&self) -> Option<(TensorRef<'_>, TensorRef<'_>)> {
        match (
            self.masks.as_ref().into_option(),
            self.mask_present.as_ref().into_option(),
        ) {
            (Some(m), Some(p)) => Some((m.view(), p.view())),
            _ => None,
        }
    }
    /// The saliency maps, if computed.
    pub fn saliency(&self) -> Option<TensorRef<'_>> {
        self.saliency.as_ref().into_option().map(RTensor::view)
    }
    /// Number of samples.
    pub fn len(&self) -> i64 {
        self.images().size().first().copied().unwrap_or(0)
    }
    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
