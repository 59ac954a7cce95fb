//! Image files (JPEG, PNG) to fixed-size `u8` pixel arrays, decoded in parallel.
use super::error::DataError;
use crate::resize::{region_planes, scaled_region_planes, Sampling};
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
    let bytes = super::error::read(path, sat_input::Kind::Image)?;
    decode_bytes(&bytes).map_err(|m| DataError::format(path, m))
}

/// Whether `bytes` start with a JPEG signature.
fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

thread_local! {
    /// Each thread's libjpeg-turbo decompressor.
    static TURBO: std::cell::RefCell<Option<turbojpeg::Decompressor>> = const { std::cell::RefCell::new(None) };
}

/// `f` with this thread's libjpeg-turbo decompressor (made on first use).
fn with_turbo<T>(
    f: impl FnOnce(&mut turbojpeg::Decompressor) -> Result<T, turbojpeg::Error>,
) -> Result<T, turbojpeg::Error> {
    TURBO.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(turbojpeg::Decompressor::new()?);
        }
        f(slot.as_mut().expect("made above"))
    })
}

/// The `(width, height)` an image's header declares, refused beyond [`MAX_PIXELS`].
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    let (w, h) = if is_jpeg(bytes) {
        let header = with_turbo(|d| d.read_header(bytes))
            .map_err(|e| format!("cannot decode image: {e}"))?;
        (header.width as u32, header.height as u32)
    } else {
        reader(bytes)?
            .into_dimensions()
            .map_err(|e| format!("cannot decode image: {e}"))?
    };
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!(
            "the image declares {w}×{h} pixels, more than the {MAX_PIXELS} sat decodes"
        ));
    }
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok((w, h))
}

/// An image reader over `bytes`, its format guessed, with the decoder limits.
fn reader(bytes: &[u8]) -> Result<image::ImageReader<std::io::Cursor<&[u8]>>, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read image: {e}"))?;
    reader.limits(limits());
    Ok(reader)
}

/// Decodes JPEG or PNG `bytes` (the format guessed from its signature), refusing images
/// of more than [`MAX_PIXELS`] before allocating them.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    if is_jpeg(bytes) {
        return decode_rgb(bytes, 1).map(image::DynamicImage::ImageRgb8);
    }
    dimensions(bytes)?;
    reader(bytes)?
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))
}

/// Decodes `bytes` to RGB; a JPEG at `1 / scale` of its size (`scale` 1, 2, 4 or 8:
/// libjpeg-turbo's DCT scaling, which skips most of the work; each side rounded up).
/// JPEGs are decoded by libjpeg-turbo (measured faster than zune-jpeg, the `image`
/// crate's decoder: docs/PERFORMANCE.md), other formats by the `image` crate. A
/// corrupt JPEG (libjpeg-turbo's warnings too) is an error.
pub fn decode_rgb(bytes: &[u8], scale: u32) -> Result<image::RgbImage, String> {
    if !is_jpeg(bytes) {
        return Ok(decode_bytes(bytes)?.into_rgb8());
    }
    let (w, h) = dimensions(bytes)?;
    let factor = turbojpeg::ScalingFactor::new(1, scale.max(1) as usize);
    let (sw, sh) = (factor.scale(w as usize), factor.scale(h as usize));
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; 3 * sw * sh],
        width: sw,
        pitch: 3 * sw,
        height: sh,
        format: turbojpeg::PixelFormat::RGB,
    };
    with_turbo(|d| {
        d.set_scaling_factor(factor)?;
        d.decompress(bytes, image.as_deref_mut())
    })
    .map_err(|e| format!("cannot decode image: {e}"))?;
    Ok(image::RgbImage::from_raw(sw as u32, sh as u32, image.pixels).expect("3 · w · h bytes"))
}

/// Decodes the image at `path` and resizes it (bilinear) to `size × size`.
pub fn read_rgb(path: &Path, size: u32) -> Result<Decoded, DataError> {
    let bytes = super::error::read(path, sat_input::Kind::Image)?;
    let (w, h) = dimensions(&bytes).map_err(|m| DataError::format(path, m))?;
    let (image, scale) =
        decode_region(&bytes, (0, 0, w, h), size).map_err(|m| DataError::format(path, m))?;
    Ok(Decoded {
        pixels: scaled_region_planes(
            image.as_raw(),
            image.dimensions(),
            3,
            (0, 0, w, h),
            scale,
            size,
            Sampling::Bilinear,
        ),
        scale: (size as f32 / w as f32, size as f32 / h as f32),
        original: (w, h),
    })
}

/// `bytes` decoded for a `size × size` view of `region` (full-size pixels): a JPEG at
/// the coarsest DCT scale (1/8, 1/4, 1/2) that leaves the region at least `size` on
/// each side, else at full size. Returns the image and the scale's denominator.
pub fn decode_region(
    bytes: &[u8],
    region: crate::resize::Region,
    size: u32,
) -> Result<(image::RgbImage, u32), String> {
    let scale = [8, 4, 2]
        .into_iter()
        .find(|&s| is_jpeg(bytes) && region.2 / s >= size && region.3 / s >= size)
        .unwrap_or(1);
    Ok((decode_rgb(bytes, scale)?, scale))
}

/// `image` (non-empty) resized (antialiased bilinear, [`crate::resize`]) to
/// `size × size`, channel-major.
pub fn resized_rgb(image: image::RgbImage, size: u32) -> Decoded {
    let (w, h) = image.dimensions();
    Decoded {
        pixels: region_planes(
            image.as_raw(),
            (w, h),
            3,
            (0, 0, w, h),
            size,
            Sampling::Bilinear,
        ),
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
    Ok(region_planes(
        mask.as_raw(),
        (w, h),
        1,
        (0, 0, w, h),
        size,
        Sampling::Nearest,
    ))
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

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 90]))
            .write_to(
                &mut std::io::Cursor::new(&mut out),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        out
    }

    #[test]
    fn jpegs_decode_at_dct_scales_and_truncated_ones_are_errors() {
        let full = jpeg(64, 48);
        assert_eq!(decode_rgb(&full, 1).unwrap().dimensions(), (64, 48));
        assert_eq!(decode_rgb(&full, 2).unwrap().dimensions(), (32, 24));
        assert_eq!(decode_rgb(&full, 8).unwrap().dimensions(), (8, 6));
        // A region of 64×48 viewed at 16 px: decoded at 1/2 (32×24 still ≥ 16).
        let (image, scale) = decode_region(&full, (0, 0, 64, 48), 16).unwrap();
        assert_eq!((image.dimensions(), scale), ((32, 24), 2));
        let e = decode_rgb(&full[..full.len() / 2], 1).unwrap_err();
        assert!(e.contains("cannot decode"), "{e}");
    }

    #[test]
    fn a_header_declaring_a_huge_image_is_refused_before_decoding() {
        // Patch the SOF0 frame's height and width (after FFC0, length, precision).
        let mut bomb = jpeg(16, 16);
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]); // 60000 × 60000
        let e = dimensions(&bomb).unwrap_err();
        assert!(e.contains("60000×60000") && e.contains("more than"), "{e}");
        assert!(decode_bytes(&bomb).unwrap_err().contains("more than"));
        let mut png = Vec::new();
        image::GrayImage::new(4, 4)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png[16..24].copy_from_slice(&[0, 1, 0, 0, 0, 1, 0, 0]); // IHDR: 65536 × 65536
        assert!(dimensions(&png).is_err());
    }

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
