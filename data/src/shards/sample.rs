//! One shard sample decoded and augmented: the image, its boxes and its mask take the
//! same crop, resize and flip.
//!
//! - `cifar` recipe: the image is resized to `size × size` (as the in-memory readers
//!   do, with the same filter, so the pixels are identical); training adds a random crop
//!   after zero padding and a flip ([`Crop`], as the in-memory path draws it).
//! - `imagenet` recipe: training takes a random-resized crop (torchvision's
//!   `RandomResizedCrop`: ten tries at an area in `scale` and a log-uniform aspect ratio
//!   in `ratio`, else the centre crop of the ratio nearest the image's) resized to
//!   `size × size`, and a flip; evaluation resizes the shorter side to
//!   `size / eval_crop` and takes the centre `size × size`.
use super::RawSample;
use crate::augment::Crop;
use crate::config::Recipe;
use crate::decode::{area_planes, decode_bytes, decode_region, dimensions};
use crate::resize::{region_planes, Region, Sampling};
use crate::rng::SplitMix;
use image::GrayImage;

/// How a sample is prepared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    /// Training: the recipe's random crop and flip.
    Train {
        /// The recipe.
        recipe: Recipe,
        /// `cifar`: zero padding of the random crop.
        padding: i64,
        /// Random horizontal flips.
        flip: bool,
        /// `imagenet`: the crop's area range, as a share of the image.
        scale: [f64; 2],
        /// `imagenet`: the crop's aspect-ratio range.
        ratio: [f64; 2],
    },
    /// Evaluation: no randomness.
    Eval {
        /// The recipe.
        recipe: Recipe,
        /// `imagenet`: the share of the resized image the centre crop keeps.
        eval_crop: f64,
    },
}

/// A decoded, augmented sample at `size × size`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `3 · size²` bytes, channel-major.
    pub pixels: Vec<u8>,
    /// Class index.
    pub label: i64,
    /// Boxes (`x0, y0, x1, y1`, half-open pixels of the prepared image).
    pub boxes: Vec<[f32; 4]>,
    /// `size²` mask bytes (255 = object), when the sample has a mask.
    pub mask: Option<Vec<u8>>,
}

/// torchvision's `RandomResizedCrop.get_params` for a `w × h` image.
pub fn random_resized_crop(
    w: u32,
    h: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut SplitMix,
) -> Region {
    let area = w as f64 * h as f64;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.range(scale[0], scale[1]);
        let aspect = rng.range(log_lo, log_hi).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let y = rng.below((h - ch + 1) as u64) as u32;
            let x = rng.below((w - cw + 1) as u64) as u32;
            return (x, y, cw, ch);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, ((w as f64 / ratio[0]).round() as u32).clamp(1, h))
    } else if in_ratio > ratio[1] {
        (((h as f64 * ratio[1]).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// The centre crop that resizing the shorter side to `size / eval_crop` and keeping
/// the central `size × size` takes, in the original image's pixels.
pub fn centre_crop(w: u32, h: u32, size: u32, eval_crop: f64) -> Region {
    let resized_short = (size as f64 / eval_crop).round().max(size as f64);
    let side = ((size as f64 * w.min(h) as f64 / resized_short).round() as u32).clamp(1, w.min(h));
    ((w - side) / 2, (h - side) / 2, side, side)
}

/// Boxes from `KEY.boxes.json`, in the pixels of a `w × h` image.
fn parse_boxes(bytes: &[u8], w: u32, h: u32) -> Result<Vec<[f32; 4]>, String> {
    #[derive(serde::Deserialize)]
    struct Stored {
        size: [u32; 2],
        boxes: Vec<[f32; 4]>,
    }
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| {
        format!("boxes.json: expected {{\"size\": [w, h], \"boxes\": [[x0, y0, x1, y1], …]}}: {e}")
    })?;
    if stored.size[0] == 0 || stored.size[1] == 0 {
        return Err("boxes.json: size must be positive".into());
    }
    let (sx, sy) = (
        w as f32 / stored.size[0] as f32,
        h as f32 / stored.size[1] as f32,
    );
    stored
        .boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let outside = b.iter().any(|v| !v.is_finite())
                || b[0] < 0.0
                || b[1] < 0.0
                || b[2] > stored.size[0] as f32
                || b[3] > stored.size[1] as f32
                || !(b[2] > b[0] && b[3] > b[1]);
            if outside {
                return Err(format!(
                    "boxes.json: box {} {b:?} is not a box inside its {}×{} image",
                    i + 1,
                    stored.size[0],
                    stored.size[1]
                ));
            }
            Ok([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
        })
        .collect()
}

/// `region` of `mask` resized to `size × size` (nearest).
fn crop_mask(mask: &GrayImage, region: Region, size: u32) -> Vec<u8> {
    region_planes(
        mask.as_raw(),
        mask.dimensions(),
        1,
        region,
        size,
        Sampling::Nearest,
    )
}

/// Boxes of the original image in the pixels of `region` resized to `size`, clipped;
/// those with nothing left are dropped.
fn crop_boxes(boxes: &[[f32; 4]], region: Region, size: u32) -> Vec<[f32; 4]> {
    let (x, y, w, h) = region;
    let (sx, sy) = (size as f32 / w as f32, size as f32 / h as f32);
    let s = size as f32;
    boxes
        .iter()
        .filter_map(|b| {
            let out = [
                ((b[0] - x as f32) * sx).clamp(0.0, s),
                ((b[1] - y as f32) * sy).clamp(0.0, s),
                ((b[2] - x as f32) * sx).clamp(0.0, s),
                ((b[3] - y as f32) * sy).clamp(0.0, s),
            ];
            (out[2] > out[0] && out[3] > out[1]).then_some(out)
        })
        .collect()
}

/// Mirrors each row of each `size`-wide plane of `planes`.
fn mirror(planes: &mut [u8], size: usize) {
    for row in planes.chunks_mut(size) {
        row.reverse();
    }
}

/// The pad-crop of [`Crop`] on `size × size` planes (zero outside the image).
fn pad_crop(planes: &[u8], size: usize, padding: i64, crop: Crop) -> Vec<u8> {
    let mut out = vec![0u8; planes.len()];
    let (dx, dy) = (crop.x - padding, crop.y - padding);
    for (plane_in, plane_out) in planes.chunks(size * size).zip(out.chunks_mut(size * size)) {
        for y in 0..size as i64 {
            let sy = y + dy;
            if !(0..size as i64).contains(&sy) {
                continue;
            }
            for x in 0..size as i64 {
                let sx = x + dx;
                if (0..size as i64).contains(&sx) {
                    plane_out[(y * size as i64 + x) as usize] =
                        plane_in[(sy * size as i64 + sx) as usize];
                }
            }
        }
    }
    if crop.flip {
        mirror(&mut out, size);
    }
    out
}

/// Boxes after [`pad_crop`]: shifted, clipped, flipped; empty ones dropped.
fn pad_crop_boxes(boxes: &[[f32; 4]], size: u32, padding: i64, crop: Crop) -> Vec<[f32; 4]> {
    let s = size as f32;
    let (dx, dy) = ((padding - crop.x) as f32, (padding - crop.y) as f32);
    boxes
        .iter()
        .filter_map(|b| {
            let (x0, x1) = ((b[0] + dx).clamp(0.0, s), (b[2] + dx).clamp(0.0, s));
            let (y0, y1) = ((b[1] + dy).clamp(0.0, s), (b[3] + dy).clamp(0.0, s));
            let (x0, x1) = if crop.flip {
                (s - x1, s - x0)
            } else {
                (x0, x1)
            };
            (x1 > x0 && y1 > y0).then_some([x0, y0, x1, y1])
        })
        .collect()
}

/// `raw`'s boxes (in the pixels of its `w × h` image) and its mask (which must have the
/// image's size).
fn annotations(
    raw: &RawSample,
    (w, h): (u32, u32),
) -> Result<(Vec<[f32; 4]>, Option<GrayImage>), String> {
    let boxes = match &raw.boxes {
        Some(bytes) => parse_boxes(bytes, w, h)?,
        None => Vec::new(),
    };
    let mask = match &raw.mask {
        Some(bytes) => {
            let mask = decode_bytes(bytes)
                .map_err(|m| format!("mask.png: {m}"))?
                .into_luma8();
            if mask.dimensions() != (w, h) {
                return Err(format!(
                    "mask.png is {}×{} but its image is {w}×{h}",
                    mask.width(),
                    mask.height()
                ));
            }
            Some(mask)
        }
        None => None,
    };
    Ok((boxes, mask))
}

/// Decodes `raw` and prepares it at `size × size` as `view` says, drawing from `rng`
/// (the sample's own stream) in training.
pub fn prepare(
    raw: &RawSample,
    size: u32,
    view: &View,
    rng: &mut SplitMix,
) -> Result<Prepared, String> {
    let (w, h) = dimensions(&raw.image)?;
    let (boxes, mask) = annotations(raw, (w, h))?;
    let (region, flip_after) = match *view {
        View::Train {
            recipe: Recipe::Imagenet,
            flip,
            scale,
            ratio,
            ..
        } => {
            let region = random_resized_crop(w, h, scale, ratio, rng);
            (region, flip && rng.uniform() < 0.5)
        }
        View::Eval {
            recipe: Recipe::Imagenet,
            eval_crop,
        } => (centre_crop(w, h, size, eval_crop), false),
        _ => ((0, 0, w, h), false),
    };
    // Decoded at the coarsest DCT scale that still gives the region `size` pixels, and
    // only as far as the region (and the filter's reach) goes.
    let area = decode_region(&raw.image, region, size)?;
    let mut pixels = area_planes(&area, region, size);
    let mut boxes = crop_boxes(&boxes, region, size);
    let mut mask = mask.map(|m| crop_mask(&m, region, size));
    let side = size as usize;
    if flip_after {
        mirror(&mut pixels, side);
        if let Some(m) = mask.as_mut() {
            mirror(m, side);
        }
        let s = size as f32;
        boxes = boxes
            .iter()
            .map(|b| [s - b[2], b[1], s - b[0], b[3]])
            .collect();
    }
    if let View::Train {
        recipe: Recipe::Cifar,
        padding,
        flip,
        ..
    } = *view
    {
        if padding > 0 || flip {
            let crop = Crop::draw(padding, flip, rng);
            pixels = pad_crop(&pixels, side, padding, crop);
            mask = mask.map(|m| pad_crop(&m, side, padding, crop));
            boxes = pad_crop_boxes(&boxes, size, padding, crop);
        }
    }
    Ok(Prepared {
        pixels,
        label: raw.label,
        boxes,
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_resized_crops_stay_inside_and_follow_the_ranges() {
        let mut rng = SplitMix::new(1, 2);
        for _ in 0..500 {
            let (x, y, w, h) =
                random_resized_crop(500, 375, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            assert!(x + w <= 500 && y + h <= 375 && w > 0 && h > 0);
            let area = (w * h) as f64 / (500.0 * 375.0);
            assert!((0.07..=1.0).contains(&area), "{area}");
        }
        // A strip far wider than any allowed ratio: the fallback centre crop.
        let mut never = SplitMix::new(0, 0);
        let (x, _, w, h) =
            random_resized_crop(1000, 10, [0.99, 1.0], [0.75, 4.0 / 3.0], &mut never);
        assert_eq!((w, h, x), (13, 10, 493));
    }

    #[test]
    fn the_centre_crop_is_torchvisions_resize_then_centre_crop() {
        // 500×375 → shorter side 256 (224 / 0.875), centre 224: 224·375/256 = 328 px.
        assert_eq!(centre_crop(500, 375, 224, 0.875), (86, 23, 328, 328));
        assert_eq!(centre_crop(32, 32, 32, 1.0), (0, 0, 32, 32));
    }

    #[test]
    fn pad_crop_moves_pixels_boxes_and_flips_like_the_in_memory_path() {
        // A 4×4 plane with one bright pixel at (x 1, y 2), its box [1, 2, 2, 3].
        let mut plane = vec![0u8; 16];
        plane[2 * 4 + 1] = 255;
        let crop = Crop {
            x: 0,
            y: 2,
            flip: false,
        }; // shift right by 1, up by 1
        let out = pad_crop(&plane, 4, 1, crop);
        assert_eq!(out.iter().position(|&v| v == 255), Some(4 + 2));
        assert_eq!(
            pad_crop_boxes(&[[1.0, 2.0, 2.0, 3.0]], 4, 1, crop),
            vec![[2.0, 1.0, 3.0, 2.0]]
        );
        let flipped = Crop { flip: true, ..crop };
        let out = pad_crop(&plane, 4, 1, flipped);
        assert_eq!(out.iter().position(|&v| v == 255), Some(4 + 1));
        assert_eq!(
            pad_crop_boxes(&[[1.0, 2.0, 2.0, 3.0]], 4, 1, flipped),
            vec![[1.0, 1.0, 2.0, 2.0]]
        );
        // Pushed out of the image: dropped.
        let away = Crop {
            x: 2,
            y: 1,
            flip: false,
        };
        assert!(pad_crop_boxes(&[[0.0, 0.0, 1.0, 1.0]], 4, 1, away).is_empty());
    }

    #[test]
    fn boxes_outside_their_image_are_errors() {
        let good = br#"{"size": [10, 20], "boxes": [[1, 2, 5, 20]]}"#;
        assert_eq!(
            parse_boxes(good, 20, 40).unwrap(),
            vec![[2.0, 4.0, 10.0, 40.0]]
        );
        let outside = br#"{"size": [10, 20], "boxes": [[1, 2, 11, 5]]}"#;
        assert!(parse_boxes(outside, 10, 20).unwrap_err().contains("box 1"));
        assert!(parse_boxes(b"[[1,2,3,4]]", 10, 20).is_err());
    }
}
