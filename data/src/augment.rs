//! Training augmentation that moves boxes and masks together with the image.
use super::rng::SplitMix;
use super::Samples;
use tch::{Kind, Tensor};

/// One sample's augmentation: the offset of its crop in the padded image and whether it
/// is flipped horizontally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// Column of the crop's left edge in the padded image, `0..=2·padding`.
    pub x: i64,
    /// Row of the crop's top edge in the padded image, `0..=2·padding`.
    pub y: i64,
    /// Mirrored left to right.
    pub flip: bool,
}

impl Crop {
    /// Draws a crop offset for zero padding `padding` and, if `flip`, a fair coin for the
    /// flip.
    pub fn draw(padding: i64, flip: bool, rng: &mut SplitMix) -> Crop {
        let x = rng.below(2 * padding.max(0) as u64 + 1) as i64;
        let y = rng.below(2 * padding.max(0) as u64 + 1) as i64;
        let flip = flip && rng.uniform() < 0.5;
        Crop { x, y, flip }
    }

    /// The bytes of this crop, for digests.
    pub fn bytes(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[..8].copy_from_slice(&self.x.to_le_bytes());
        out[8..16].copy_from_slice(&self.y.to_le_bytes());
        out[16] = u8::from(self.flip);
        out
    }
}

/// Random crop after zero padding by `padding`, and a random horizontal flip (if `flip`),
/// drawn per sample from `rng`; returns the crops drawn too. Boxes are shifted, flipped
/// and clipped (a box that leaves the image becomes padding); masks get the image's
/// transform.
pub fn crop_and_flip(
    samples: &Samples,
    padding: i64,
    flip: bool,
    rng: &mut SplitMix,
) -> (Samples, Vec<Crop>) {
    let n = samples.images.size()[0];
    let crops: Vec<Crop> = (0..n).map(|_| Crop::draw(padding, flip, rng)).collect();
    (apply(samples, padding, &crops), crops)
}

/// Applies one crop per sample after zero padding by `padding`.
pub fn apply(samples: &Samples, padding: i64, crops: &[Crop]) -> Samples {
    let images = &samples.images;
    let (n, h, w) = (images.size()[0], images.size()[2], images.size()[3]);
    assert_eq!(crops.len() as i64, n, "one crop per sample");
    let pad = |t: &Tensor| t.constant_pad_nd([padding, padding, padding, padding]);
    let padded_images = pad(images);
    let padded_masks = samples.masks.as_ref().map(|(m, _)| pad(m));
    let mut out_images = Vec::with_capacity(n as usize);
    let mut out_masks = Vec::with_capacity(n as usize);
    let mut shifts = Vec::with_capacity(n as usize * 3);
    for (i, c) in crops.iter().enumerate() {
        let crop = |t: &Tensor| {
            let cut = t.get(i as i64).narrow(1, c.y, h).narrow(2, c.x, w);
            if c.flip {
                cut.flip([2])
            } else {
                cut
            }
        };
        out_images.push(crop(&padded_images));
        if let Some(m) = &padded_masks {
            out_masks.push(crop(m));
        }
        shifts.extend([
            (padding - c.x) as f32,
            (padding - c.y) as f32,
            if c.flip { 1.0 } else { 0.0 },
        ]);
    }
    let shifts = Tensor::from_slice(&shifts)
        .reshape([n, 1, 3])
        .to_device(images.device());
    let boxes = samples
        .boxes
        .as_ref()
        .map(|b| transform_boxes(b, &shifts, w as f64, h as f64));
    Samples {
        images: Tensor::stack(&out_images, 0),
        labels: samples.labels.shallow_clone(),
        boxes,
        masks: samples
            .masks
            .as_ref()
            .map(|(_, p)| (Tensor::stack(&out_masks, 0), p.shallow_clone())),
        ids: samples.ids.as_ref().map(Tensor::shallow_clone),
    }
}

/// Applies per-sample `(dx, dy, flip)` (`shifts`: `[N, 1, 3]`) to boxes `[N, B, 4]`.
fn transform_boxes(boxes: &Tensor, shifts: &Tensor, w: f64, h: f64) -> Tensor {
    let col = |t: &Tensor, i: i64| t.select(2, i);
    let valid = col(boxes, 2).gt_tensor(&col(boxes, 0));
    let (dx, dy, flip) = (col(shifts, 0), col(shifts, 1), col(shifts, 2).gt(0.5));
    let x0 = (col(boxes, 0) + &dx).clamp(0.0, w);
    let x1 = (col(boxes, 2) + &dx).clamp(0.0, w);
    let y0 = (col(boxes, 1) + &dy).clamp(0.0, h);
    let y1 = (col(boxes, 3) + &dy).clamp(0.0, h);
    let (fx0, fx1) = ((-&x1) + w, (-&x0) + w);
    let x0f = fx0.where_self(&flip, &x0);
    let x1f = fx1.where_self(&flip, &x1);
    let out = Tensor::stack(&[x0f, y0, x1f, y1], 2);
    let keep = valid
        .logical_and(&col(&out, 2).gt_tensor(&col(&out, 0)))
        .logical_and(&col(&out, 3).gt_tensor(&col(&out, 1)));
    out.where_self(&keep.unsqueeze(-1), &out.full_like(-1.0))
        .to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// An image whose pixels inside an asymmetric box are 1, with that box and mask.
    fn sample() -> Samples {
        let img = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let _ = img.narrow(2, 1, 3).narrow(3, 0, 2).fill_(1.0); // rows 1..4, cols 0..2
        let mask = img.narrow(1, 0, 1).copy();
        Samples {
            images: img,
            labels: Tensor::from_slice(&[0i64]),
            boxes: Some(Tensor::from_slice(&[0.0f32, 1.0, 2.0, 4.0]).reshape([1, 1, 4])),
            masks: Some((mask, Tensor::from_slice(&[true]))),
            ids: None,
        }
    }

    /// The tight box of the non-zero pixels of a `[1, H, W]` image.
    fn tight_box(t: &Tensor) -> Vec<f32> {
        let nz = t.get(0).nonzero();
        let (ys, xs) = (nz.select(1, 0), nz.select(1, 1));
        vec![
            xs.min().int64_value(&[]) as f32,
            ys.min().int64_value(&[]) as f32,
            (xs.max().int64_value(&[]) + 1) as f32,
            (ys.max().int64_value(&[]) + 1) as f32,
        ]
    }

    #[test]
    fn boxes_and_masks_follow_the_image_through_crop_and_flip() {
        let s = sample();
        let mut seen_flip = false;
        for seed in 0..40 {
            let mut rng = SplitMix::new(seed, 0);
            let (out, crops) = crop_and_flip(&s, 1, true, &mut rng);
            assert_eq!(crops.len(), 1);
            let b: Vec<f32> = Vec::try_from(out.boxes.as_ref().unwrap().get(0).get(0)).unwrap();
            let img = out.images.get(0).narrow(0, 0, 1);
            // The box, clipped to the image, is where the bright pixels went.
            assert_eq!(b, tight_box(&img), "seed {seed}");
            assert!(
                out.masks.as_ref().unwrap().0.get(0).equal(&img),
                "mask moves with the image"
            );
            seen_flip |= b[0] >= 4.0;
        }
        assert!(seen_flip, "some draws flip the box to the right-hand side");
    }

    #[test]
    fn a_box_pushed_out_of_the_image_becomes_padding() {
        let boxes = Tensor::from_slice(&[0.0f32, 0.0, 1.0, 1.0]).reshape([1, 1, 4]);
        let shifts = Tensor::from_slice(&[-2.0f32, 0.0, 0.0]).reshape([1, 1, 3]);
        let out: Vec<f32> =
            Vec::try_from(transform_boxes(&boxes, &shifts, 8.0, 8.0).flatten(0, -1)).unwrap();
        assert_eq!(out, [-1.0, -1.0, -1.0, -1.0]);
    }
}
