//! Image files (JPEG, PNG) to fixed-size `u8` pixel arrays, decoded in parallel.
use super::error::DataError;
use crate::resize::{region_planes, Sampling};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An image resized to `size × size`: RGB pixels in CHW order, and the factors that
/// map the original pixel coordinates onto the resized ones.
pub struct Decoded {
    /// `3 · size · size` bytes, channel-major.
    pub pixels: Vec<u8>,
    /// `(size / width, size / height)` of the original image.
    pub scale: (f32, f32),
    /// `(width, height)` of the original image.
    pub original: (u32, u32),
}

/// Most pixels of an image that is decoded (a header declaring more is refused before
/// anything is allocated): 2²⁶ ≈ 67 million, 8 192 × 8 192.
pub const MAX_PIXELS: u64 = 1 << 26;

/// The decoder limits: [`MAX_PIXELS`], and allocations of at most 4 bytes per pixel.
fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(1 << 16);
    limits.max_image_height = Some(1 << 16);
    limits.max_alloc = Some(4 * MAX_PIXELS);
    limits
}

fn open(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = super::error::read(path)?;
    decode_bytes(&bytes).map_err(|m| DataError::format(path, m))
}

/// Decodes JPEG or PNG `bytes` (the format guessed from its signature), refusing images
/// of more than [`MAX_PIXELS`] before allocating them.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let reader = || -> Result<_, String> {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read image: {e}"))?;
        reader.limits(limits());
        Ok(reader)
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!(
            "the image declares {w}×{h} pixels, more than the {MAX_PIXELS} sat decodes"
        ));
    }
    reader()?
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))
}

/// Decodes the image at `path` and resizes it (bilinear) to `size × size`.
pub fn read_rgb(path: &Path, size: u32) -> Result<Decoded, DataError> {
    let image = open(path)?.into_rgb8();
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::format(path, "empty image"));
    }
    Ok(resized_rgb(image, size))
}

/// `image` (non-empty) resized (antialiased bilinear, [`crate::resize`]) to
/// `size × size`, channel-major.
pub fn resized_rgb(image: image::RgbImage, size: u32) -> Decoded {
    let (w, h) = image.dimensions();
    Decoded {
        pixels: region_planes(image.as_raw(), (w, h), 3, (0, 0, w, h), size, Sampling::Bilinear),
        scale: (size as f32 / w as f32, size as f32 / h as f32),
        original: (w, h),
    }
}

/// Decodes a mask or trimap at `path` as grey levels (`0` background, `255` object)
/// resized with nearest-neighbour sampling to `size × size`. With `image` (its image's
/// original `(width, height)`), a mask of another size is an error: it was made for
/// another picture, or another crop (`[data] resize_masks = true` passes `None`).
pub fn read_mask(path: &Path, size: u32, image: Option<(u32, u32)>) -> Result<Vec<u8>, DataError> {
    let mask = open(path)?.into_luma8();
    let (w, h) = mask.dimensions();
    if w == 0 || h == 0 {
        return Err(DataError::format(path, "empty mask"));
    }
    if let Some((iw, ih)) = image {
        if (w, h) != (iw, ih) {
            return Err(DataError::format(
                path,
                format!("the mask is {w}×{h} but its image is {iw}×{ih}; a mask must have its image's size (set [data] resize_masks = true to resize it anyway)"),
            ));
        }
    }
    Ok(region_planes(mask.as_raw(), (w, h), 1, (0, 0, w, h), size, Sampling::Nearest))
}

/// Applies `f` to every item on all cores, in order, with a progress bar labelled
/// `what`; the first error (in item order) is returned.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    what: &str,
    f: impl Fn(&T) -> Result<R, DataError> + Sync,
) -> Result<Vec<R>, DataError> {
    let bar = crate::progress::bar(
        items.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} ({elapsed}<{eta})",
    );
    bar.set_prefix(what.to_string());
    let out = parallel_map_with(items, &bar, f);
    bar.finish_and_clear();
    out
}

/// [`parallel_map`] advancing `bar` by one per item (the caller finishes it).
pub fn parallel_map_with<T: Sync, R: Send>(
    items: &[T],
    bar: &indicatif::ProgressBar,
    f: impl Fn(&T) -> Result<R, DataError> + Sync,
) -> Result<Vec<R>, DataError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<R, DataError>>> = (0..items.len()).map(|_| None).collect();
    let chunks: Vec<Vec<(usize, Result<R, DataError>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= items.len() {
                            break done;
                        }
                        let r = f(&items[i]);
                        let failed = r.is_err();
                        done.push((i, r));
                        bar.inc(1);
                        if failed {
                            // Stop handing out work; earlier items still finish.
                            next.fetch_max(items.len(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a dataset worker panicked"))
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        slots[i] = Some(r);
    }
    let mut out = Vec::with_capacity(items.len());
    for slot in slots {
        match slot {
            Some(r) => out.push(r?),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::fuzz_cases(128),
            ..Default::default()
        })]
        /// Any bytes behind a PNG or JPEG signature (or a real image's first bytes): an
        /// image or an error naming the file, never a panic.
        #[test]
        fn any_image_bytes_decode_cleanly(
            kind in 0u8..3,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..2000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.img");
            let mut bytes = match kind {
                0 => b"\x89PNG\r\n\x1a\n".to_vec(),
                1 => vec![0xFF, 0xD8, 0xFF, 0xE0],
                _ => {
                    let mut png = Vec::new();
                    image::RgbImage::from_pixel(9, 7, image::Rgb([1, 2, 3]))
                        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                        .unwrap();
                    png.truncate(cut.min(png.len()));
                    png
                }
            };
            bytes.extend(&tail);
            std::fs::write(&path, &bytes).unwrap();
            match read_rgb(&path, 8) {
                Ok(d) => proptest::prop_assert_eq!(d.pixels.len(), 3 * 64),
                Err(e) => proptest::prop_assert!(e.to_string().contains("x.img")),
            }
            if let Err(e) = read_mask(&path, 8, None) {
                proptest::prop_assert!(e.to_string().contains("x.img"));
            }
        }
    }
}
