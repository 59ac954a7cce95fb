//! Decoded samples into an in-memory [`Dataset`] (images and masks kept as `u8`).
use super::Dataset;
use tch::{Device, Kind, Tensor};

/// One decoded sample.
pub struct Sample {
    /// `3 · size · size` RGB bytes, channel-major.
    pub pixels: Vec<u8>,
    /// Class index.
    pub label: i64,
    /// Boxes `(x0, y0, x1, y1)` in resized pixel coordinates, half-open.
    pub boxes: Vec<[f32; 4]>,
    /// `size · size` mask bytes (`255` = object), when the sample has one.
    pub mask: Option<Vec<u8>>,
}

/// Which annotations the dataset format carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Annotations {
    /// Bounding boxes.
    pub boxes: bool,
    /// Segmentation masks (some samples may lack theirs).
    pub masks: bool,
}

/// Samples decoded and copied into the dataset's tensors at a time: their buffers are
/// freed (and reused by the next chunk) before more are decoded, so the peak stays near
/// one copy of the decoded pixels.
pub const CHUNK: usize = 512;

/// Fills a dataset's tensors chunk by chunk.
pub struct Assembler {
    images: Tensor,
    masks: Option<Tensor>,
    labels: Vec<i64>,
    boxes: Vec<Vec<[f32; 4]>>,
    present: Vec<bool>,
    size: i64,
    annotations: Annotations,
}

impl Assembler {
    /// Room for `n` samples of side `size`.
    pub fn new(n: usize, size: i64, annotations: Annotations) -> Self {
        let n = n as i64;
        Self {
            images: Tensor::empty([n, 3, size, size], (Kind::Uint8, Device::Cpu)),
            masks: annotations
                .masks
                .then(|| Tensor::empty([n, 1, size, size], (Kind::Uint8, Device::Cpu))),
            labels: Vec::with_capacity(n as usize),
            boxes: Vec::with_capacity(n as usize),
            present: Vec::new(),
            size,
            annotations,
        }
    }

    /// Copies `chunk` in after the samples pushed so far, consuming it.
    pub fn push(&mut self, chunk: Vec<Sample>) {
        let (start, count, size) = (self.labels.len() as i64, chunk.len() as i64, self.size);
        let plane = (size * size) as usize;
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * plane);
        let mut mask_bytes = Vec::new();
        for s in chunk {
            pixels.extend_from_slice(&s.pixels);
            self.labels.push(s.label);
            self.boxes.push(s.boxes);
            if self.annotations.masks {
                self.present.push(s.mask.is_some());
                match s.mask {
                    Some(m) => mask_bytes.extend_from_slice(&m),
                    None => mask_bytes.extend(std::iter::repeat_n(0u8, plane)),
                }
            }
        }
        self.images
            .narrow(0, start, count)
            .copy_(&Tensor::from_slice(&pixels).reshape([count, 3, size, size]));
        if let Some(m) = &self.masks {
            m.narrow(0, start, count)
                .copy_(&Tensor::from_slice(&mask_bytes).reshape([count, 1, size, size]));
        }
    }

    /// The dataset of the samples pushed (all `n` of them).
    pub fn finish(self, class_names: Vec<String>) -> Dataset {
        let n = self.labels.len() as i64;
        assert_eq!(n, self.images.size()[0], "every sample pushed");
        let most = self.boxes.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut boxes = Vec::with_capacity(self.boxes.len() * most * 4);
        for b in &self.boxes {
            for i in 0..most {
                boxes.extend(b.get(i).copied().unwrap_or([-1.0; 4]));
            }
        }
        Dataset {
            images: self.images,
            labels: Tensor::from_slice(&self.labels),
            boxes: self
                .annotations
                .boxes
                .then(|| Tensor::from_slice(&boxes).reshape([n, most as i64, 4])),
            masks: self
                .masks
                .map(|m| (m, Tensor::from_slice(&self.present).to_kind(Kind::Bool))),
            class_names,
        }
    }
}

/// Stacks `samples` of side `size` into a dataset, consuming them chunk by chunk.
pub fn assemble(
    samples: Vec<Sample>,
    size: i64,
    class_names: Vec<String>,
    annotations: Annotations,
) -> Dataset {
    let mut assembler = Assembler::new(samples.len(), size, annotations);
    let mut samples = samples.into_iter();
    loop {
        let chunk: Vec<Sample> = samples.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        assembler.push(chunk);
    }
    assembler.finish(class_names)
}

/// Scales a box given in original pixel coordinates by `scale` and clips it to the
/// image; `None` when nothing of it is left.
pub fn scale_box(b: [f32; 4], scale: (f32, f32), size: i64) -> Option<[f32; 4]> {
    let s = size as f32;
    let out = [
        (b[0] * scale.0).clamp(0.0, s),
        (b[1] * scale.1).clamp(0.0, s),
        (b[2] * scale.0).clamp(0.0, s),
        (b[3] * scale.1).clamp(0.0, s),
    ];
    (out[2] > out[0] && out[3] > out[1]).then_some(out)
}
