//! Resizing, vectorised (`fast_image_resize`, AVX2 or SSE4.1 where the CPU has them):
//! images with the antialiased bilinear convolution (the filter of PIL's `BILINEAR` and
//! of torchvision's `antialias=True`), masks with nearest-neighbour sampling, so that a
//! mask stays a mask. One function for every path, so that the in-memory readers and the
//! shard stream give the same pixels.
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use std::cell::RefCell;

thread_local! {
    /// Each thread's resizer (it keeps its scratch buffers between calls).
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// A rectangle of an image: `(x, y, width, height)`.
pub type Region = (u32, u32, u32, u32);

/// How a resize samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Antialiased bilinear (images).
    Bilinear,
    /// Nearest neighbour (masks).
    Nearest,
}

/// `region` of a `width × height` image of interleaved `channels` (1 or 3) bytes per
/// pixel, resized to `size × size`, returned channel-major (one plane per channel).
pub fn region_planes(
    pixels: &[u8],
    dims: (u32, u32),
    channels: usize,
    region: Region,
    size: u32,
    sampling: Sampling,
) -> Vec<u8> {
    let (x, y, w, h) = region;
    crop_planes(
        pixels,
        dims,
        channels,
        (x as f64, y as f64, w as f64, h as f64),
        size,
        sampling,
    )
}

/// [`region_planes`] with the region's edges at fractional pixels (`(x, y, width,
/// height)`, clamped to the image); the filter reads pixels beyond the region where the
/// image has them, as PIL's `resize(box=…)` does.
pub fn crop_planes(
    pixels: &[u8],
    (width, height): (u32, u32),
    channels: usize,
    region: (f64, f64, f64, f64),
    size: u32,
    sampling: Sampling,
) -> Vec<u8> {
    let (x, y, w, h) = region;
    let whole = (x, y, w, h) == (0.0, 0.0, width as f64, height as f64);
    let interleaved = if whole && (width, height) == (size, size) {
        pixels.to_vec()
    } else {
        let kind = if channels == 3 {
            PixelType::U8x3
        } else {
            PixelType::U8
        };
        let source = ImageRef::new(width, height, pixels, kind)
            .expect("the buffer holds width · height pixels");
        let mut out = Image::new(size, size, kind);
        let algorithm = match sampling {
            Sampling::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Sampling::Nearest => ResizeAlg::Nearest,
        };
        let (cx, cy) = (
            x.clamp(0.0, width as f64 - 1.0),
            y.clamp(0.0, height as f64 - 1.0),
        );
        let options = ResizeOptions::new().resize_alg(algorithm).crop(
            cx,
            cy,
            w.min(width as f64 - cx),
            h.min(height as f64 - cy),
        );
        RESIZER
            .with(|r| r.borrow_mut().resize(&source, &mut out, &options))
            .expect("a resize between images of one pixel type within bounds");
        out.into_vec()
    };
    if channels == 1 {
        return interleaved;
    }
    let plane = (size * size) as usize;
    let mut planes = vec![0u8; 3 * plane];
    let (r, rest) = planes.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((p, r), g), b) in interleaved.chunks_exact(3).zip(r).zip(g).zip(b) {
        (*r, *g, *b) = (p[0], p[1], p[2]);
    }
    planes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_stays_flat_and_regions_and_masks_resize_as_asked() {
        let flat = vec![200u8; 3 * 40 * 30];
        let out = region_planes(&flat, (40, 30), 3, (0, 0, 40, 30), 16, Sampling::Bilinear);
        assert_eq!(out.len(), 3 * 256);
        assert!(out.iter().all(|&v| v == 200));
        // Left half white, right half black: a crop of the left half is all white, and
        // a nearest-neighbour mask of the whole keeps only 0 and 255.
        let half: Vec<u8> = (0..30 * 40)
            .map(|i| if i % 40 < 20 { 255 } else { 0 })
            .collect();
        let left = region_planes(&half, (40, 30), 1, (0, 0, 20, 30), 8, Sampling::Nearest);
        assert!(left.iter().all(|&v| v == 255));
        let whole = region_planes(&half, (40, 30), 1, (0, 0, 40, 30), 9, Sampling::Nearest);
        assert!(whole.iter().all(|&v| v == 0 || v == 255));
        assert_eq!(whole.iter().filter(|&&v| v == 255).count() % 9, 0);
        // The same size and the whole image: the pixels, channel-major.
        let rgb: Vec<u8> = (0..12).collect();
        assert_eq!(
            region_planes(&rgb, (2, 2), 3, (0, 0, 2, 2), 2, Sampling::Bilinear),
            vec![0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]
        );
    }
}
