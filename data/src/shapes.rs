//! `shapes`: a generated, seeded classification task with exact boxes and masks.
//!
//! Each image shows one object (circle, square, triangle, cross, ring or diamond; the
//! class is the shape) in a random colour with a striped texture, at a random size and
//! position, on a cluttered background: a random base colour, per-pixel noise and
//! translucent rectangles. The object's mask and bounding box are exact. Colour carries
//! no class information, so a model has to learn shape.
use super::rng::SplitMix;
use super::Dataset;
use tch::{Kind, Tensor};

/// Names of the classes, in label order.
pub const CLASS_NAMES: [&str; 6] = ["circle", "square", "triangle", "cross", "ring", "diamond"];

/// Whether the point `(u, v)` (object coordinates, radius 1) is inside shape `class`.
fn inside(class: usize, u: f64, v: f64) -> bool {
    let r = (u * u + v * v).sqrt();
    match class {
        0 => r <= 1.0,
        1 => u.abs() <= 0.8 && v.abs() <= 0.8,
        2 => (-0.9..=0.8).contains(&v) && u.abs() <= (v + 0.9) / 1.7 * 0.95,
        3 => (u.abs() <= 0.3 && v.abs() <= 0.95) || (v.abs() <= 0.3 && u.abs() <= 0.95),
        4 => (0.55..=1.0).contains(&r),
        _ => u.abs() + v.abs() <= 1.0,
    }
}

/// Paints the background of one `3 × s × s` image: a base colour (returned), noise and
/// translucent clutter rectangles.
fn background(img: &mut [f32], s: usize, rng: &mut SplitMix) -> [f64; 3] {
    let (plane, size) = (s * s, s as f64);
    let base: [f64; 3] = [
        rng.range(0.15, 0.85),
        rng.range(0.15, 0.85),
        rng.range(0.15, 0.85),
    ];
    for c in 0..3 {
        for p in 0..plane {
            img[c * plane + p] = (base[c] + rng.range(-0.08, 0.08)) as f32;
        }
    }
    for _ in 0..4 {
        let (w, h) = (rng.range(0.1, 0.35) * size, rng.range(0.1, 0.35) * size);
        let (x0, y0) = (rng.range(0.0, size - w), rng.range(0.0, size - h));
        let colour = [rng.uniform(), rng.uniform(), rng.uniform()];
        for y in y0 as usize..(y0 + h) as usize {
            for x in x0 as usize..(x0 + w) as usize {
                for c in 0..3 {
                    let v = &mut img[c * plane + y * s + x];
                    *v = (0.6 * *v as f64 + 0.4 * colour[c]) as f32;
                }
            }
        }
    }
    base
}

/// Paints the object of shape `class` into one image (on a background of colour `base`)
/// and its mask; returns its box `(x0, y0, x1, y1)`.
fn object(
    img: &mut [f32],
    mask: &mut [f32],
    class: usize,
    base: [f64; 3],
    s: usize,
    rng: &mut SplitMix,
) -> [f32; 4] {
    let (plane, size) = (s * s, s as f64);
    let radius = rng.range(0.2, 0.34) * size;
    let cx = rng.range(radius + 1.0, size - radius - 1.0);
    let cy = rng.range(radius + 1.0, size - radius - 1.0);
    let mut colour = [rng.uniform(), rng.uniform(), rng.uniform()];
    let mean = colour.iter().sum::<f64>() / 3.0;
    let back = base.iter().sum::<f64>() / 3.0;
    if (mean - back).abs() < 0.25 {
        // Guarantee contrast: move the colour away from the background's brightness.
        let shift = if back > 0.5 { -0.45 } else { 0.45 };
        colour
            .iter_mut()
            .for_each(|c| *c = (*c + shift).clamp(0.0, 1.0));
    }
    let (angle, freq) = (rng.range(0.0, std::f64::consts::PI), rng.range(0.5, 1.5));
    let (mut x_min, mut y_min, mut x_max, mut y_max) = (s, s, 0, 0);
    for y in 0..s {
        for x in 0..s {
            let (u, v) = (
                (x as f64 + 0.5 - cx) / radius,
                (y as f64 + 0.5 - cy) / radius,
            );
            if !inside(class, u, v) {
                continue;
            }
            mask[y * s + x] = 1.0;
            (x_min, y_min, x_max, y_max) = (x_min.min(x), y_min.min(y), x_max.max(x), y_max.max(y));
            let stripe =
                0.85 + 0.15 * (freq * (x as f64 * angle.cos() + y as f64 * angle.sin())).sin();
            for c in 0..3 {
                img[c * plane + y * s + x] = (colour[c] * stripe) as f32;
            }
        }
    }
    [
        x_min as f32,
        y_min as f32,
        (x_max + 1) as f32,
        (y_max + 1) as f32,
    ]
}

/// Generates `count` images of side `size` with `classes` classes (2..=6) from `seed`;
/// `split` (0 train, 1 test) selects an independent stream.
pub fn generate(
    count: usize,
    size: i64,
    classes: i64,
    seed: u64,
    split: u64,
) -> Result<Dataset, String> {
    generate_until(count, size, classes, seed, split, &|| false)?
        .ok_or_else(|| "shapes: stopped".to_owned())
}

/// Images asked [`generate_until`]'s stop check between two calls.
const STOP_EVERY: usize = 64;

/// As [`generate`], asking `stop` every few images; `None` when it said stop.
pub fn generate_until(
    count: usize,
    size: i64,
    classes: i64,
    seed: u64,
    split: u64,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Dataset>, String> {
    if !(2..=CLASS_NAMES.len() as i64).contains(&classes) {
        return Err(format!(
            "shapes: classes must be between 2 and {}, got {classes}",
            CLASS_NAMES.len()
        ));
    }
    if !(16..=256).contains(&size) {
        return Err(format!(
            "shapes: image_size must be between 16 and 256, got {size}"
        ));
    }
    let s = size as usize;
    let plane = s * s;
    let mut images = vec![0f32; count * 3 * plane];
    let mut masks = vec![0f32; count * plane];
    let mut labels = vec![0i64; count];
    let mut boxes = vec![0f32; count * 4];
    let mut rng = SplitMix::new(seed, 0x5A7_0000 + split);
    for n in 0..count {
        if n % STOP_EVERY == 0 && stop() {
            return Ok(None);
        }
        let class = rng.below(classes as u64) as usize;
        labels[n] = class as i64;
        let img = &mut images[n * 3 * plane..(n + 1) * 3 * plane];
        let base = background(img, s, &mut rng);
        let mask = &mut masks[n * plane..(n + 1) * plane];
        let corners = object(img, mask, class, base, s, &mut rng);
        for v in img.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
        boxes[n * 4..n * 4 + 4].copy_from_slice(&corners);
    }
    let count = count as i64;
    Ok(Some(Dataset {
        images: Tensor::from_slice(&images).reshape([count, 3, size, size]),
        labels: Tensor::from_slice(&labels),
        boxes: Some(Tensor::from_slice(&boxes).reshape([count, 1, 4])),
        masks: Some((
            Tensor::from_slice(&masks).reshape([count, 1, size, size]),
            Tensor::ones([count], (Kind::Bool, tch::Device::Cpu)),
        )),
        class_names: CLASS_NAMES[..classes as usize]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_in_range_with_exact_annotations() {
        let a = generate(64, 32, 6, 7, 0).unwrap();
        let b = generate(64, 32, 6, 7, 0).unwrap();
        let test = generate(64, 32, 6, 7, 1).unwrap();
        assert!(a.images.equal(&b.images) && a.labels.equal(&b.labels));
        assert!(
            !a.images.equal(&test.images),
            "train and test streams differ"
        );
        assert!(a.images.min().double_value(&[]) >= 0.0 && a.images.max().double_value(&[]) <= 1.0);
        let labels: Vec<i64> = Vec::try_from(&a.labels).unwrap();
        assert!((0..6).all(|c| labels.contains(&c)), "every class appears");
        // The box is the tight box of the mask.
        let (masks, _) = a.masks.as_ref().unwrap();
        let boxes = a.boxes.as_ref().unwrap();
        for n in 0..8 {
            let m = masks.get(n).get(0);
            let rows = m.sum_dim_intlist(1, false, Kind::Float).gt(0.0).nonzero();
            let cols = m.sum_dim_intlist(0, false, Kind::Float).gt(0.0).nonzero();
            let b: Vec<f32> = Vec::try_from(boxes.get(n).get(0)).unwrap();
            assert_eq!(b[0] as i64, cols.min().int64_value(&[]));
            assert_eq!(b[1] as i64, rows.min().int64_value(&[]));
            assert_eq!(b[2] as i64, cols.max().int64_value(&[]) + 1);
            assert_eq!(b[3] as i64, rows.max().int64_value(&[]) + 1);
        }
        assert!(generate(4, 32, 9, 0, 0).is_err());
    }

    #[test]
    fn a_stop_request_ends_generation_early() {
        let asked = std::cell::Cell::new(0);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        assert!(generate_until(1000, 16, 2, 7, 0, &stop).unwrap().is_none());
        assert_eq!(
            asked.get(),
            3,
            "asked every {STOP_EVERY} images, stopped at once"
        );
        let whole = generate_until(70, 16, 2, 7, 0, &|| false).unwrap().unwrap();
        assert!(whole
            .images
            .equal(&generate(70, 16, 2, 7, 0).unwrap().images));
    }
}
