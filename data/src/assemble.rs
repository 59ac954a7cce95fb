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

/// Samples copied into the dataset's tensors at a time (each chunk's buffers are freed
/// once copied, so the peak stays near one copy of the decoded pixels).
const CHUNK: usize = 256;

/// Stacks `samples` of side `size` into a dataset, consuming them chunk by chunk.
pub fn assemble(
    samples: Vec<Sample>,
    size: i64,
    class_names: Vec<String>,
    annotations: Annotations,
) -> Dataset {
    let n = samples.len() as i64;
    let plane = (size * size) as usize;
    let most_boxes = samples
        .iter()
        .map(|s| s.boxes.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let images = Tensor::empty([n, 3, size, size], (Kind::Uint8, Device::Cpu));
    let masks = annotations
        .masks
        .then(|| Tensor::empty([n, 1, size, size], (Kind::Uint8, Device::Cpu)));
    let mut labels = Vec::with_capacity(samples.len());
    let mut boxes = Vec::with_capacity(samples.len() * most_boxes * 4);
    let mut present = Vec::new();
    let mut samples = samples.into_iter();
    let mut start = 0i64;
    loop {
        let chunk: Vec<Sample> = samples.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        let count = chunk.len() as i64;
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * plane);
        let mut mask_bytes = Vec::new();
        for s in chunk {
            pixels.extend_from_slice(&s.pixels);
            labels.push(s.label);
            for i in 0..most_boxes {
                boxes.extend(s.boxes.get(i).copied().unwrap_or([-1.0; 4]));
            }
            if annotations.masks {
                present.push(s.mask.is_some());
                match s.mask {
                    Some(m) => mask_bytes.extend_from_slice(&m),
                    None => mask_bytes.extend(std::iter::repeat_n(0u8, plane)),
                }
            }
        }
        images
            .narrow(0, start, count)
            .copy_(&Tensor::from_slice(&pixels).reshape([count, 3, size, size]));
        if let Some(m) = &masks {
            m.narrow(0, start, count)
                .copy_(&Tensor::from_slice(&mask_bytes).reshape([count, 1, size, size]));
        }
        start += count;
    }
    Dataset {
        images,
        labels: Tensor::from_slice(&labels),
        boxes: annotations
            .boxes
            .then(|| Tensor::from_slice(&boxes).reshape([n, most_boxes as i64, 4])),
        masks: masks.map(|m| (m, Tensor::from_slice(&present).to_kind(Kind::Bool))),
        class_names,
    }
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
