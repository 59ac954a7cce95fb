//! Image files (JPEG, PNG) to fixed-size `u8` pixel arrays, decoded in parallel.
use super::error::DataError;
use crate::jpeg;
use crate::resize::{crop_planes, region_planes, Region, Sampling};
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

/// Pixels decoded from part (or all) of an image: interleaved RGB, `width × height`,
/// the pixels from `origin` onwards of the image decoded at `1 / scale` of its size.
pub struct Area {
    /// `3 · width · height` bytes, row-major, interleaved.
    pub pixels: Vec<u8>,
    /// Width of the decoded area.
    pub width: u32,
    /// Height of the decoded area.
    pub height: u32,
    /// The area's left and top edges in the scaled image's pixels.
    pub origin: (u32, u32),
    /// The DCT scale's denominator (1, 2, 4 or 8).
    pub scale: u32,
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

/// The `(width, height)` an image's header declares, refused beyond [`MAX_PIXELS`].
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    if is_jpeg(bytes) {
        let header = jpeg::with_decoder(|d| d.header(bytes))?;
        return Ok((header.width, header.height));
    }
    let (w, h) = reader(bytes)?
        .into_dimensions()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    declared_size(w, h)?;
    Ok((w, h))
}

/// Refuses an image whose header declares more than [`MAX_PIXELS`] pixels, or none,
/// before anything is allocated for it.
pub(crate) fn declared_size(w: u32, h: u32) -> Result<(), String> {
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(format!(
            "the image declares {w}×{h} pixels, more than the {MAX_PIXELS} sat decodes"
        ));
    }
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok(())
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
    // The decoder reads the header first, refusing it beyond MAX_PIXELS.
    let area = jpeg::with_decoder(|d| d.decode(bytes, scale, None))?;
    Ok(image::RgbImage::from_raw(area.width, area.height, area.pixels).expect("3 · w · h bytes"))
}

/// Decodes the image at `path` and resizes it (bilinear) to `size × size`.
pub fn read_rgb(path: &Path, size: u32) -> Result<Decoded, DataError> {
    let bytes = super::error::read(path, sat_input::Kind::Image)?;
    let (w, h) = dimensions(&bytes).map_err(|m| DataError::format(path, m))?;
    let area = decode_region(&bytes, (0, 0, w, h), size).map_err(|m| DataError::format(path, m))?;
    Ok(Decoded {
        pixels: area_planes(&area, (0, 0, w, h), size),
        scale: (size as f32 / w as f32, size as f32 / h as f32),
        original: (w, h),
    })
}

/// `bytes` decoded for a `size × size` view of `region` (full-size pixels). A JPEG is
/// decoded at the coarsest DCT scale (1/8, 1/4, 1/2) that leaves the region at least
/// `size` on each side, else at full size, and only the part of it that the region and
/// the resize filter's reach around it cover ([`jpeg::Decoder::decode`]); the resized
/// pixels equal those of a whole decode ([`area_planes`]). So damage confined to rows
/// below the region goes unseen in this view: `sat-host data pack` decodes every image
/// whole, and `data inspect --verify` checks every shard's digest.
pub fn decode_region(bytes: &[u8], region: Region, size: u32) -> Result<Area, String> {
    if !is_jpeg(bytes) {
        let image = decode_bytes(bytes)?.into_rgb8();
        let (width, height) = image.dimensions();
        return Ok(Area {
            pixels: image.into_raw(),
            width,
            height,
            origin: (0, 0),
            scale: 1,
        });
    }
    let scale = [8, 4, 2]
        .into_iter()
        .find(|&s| region.2 / s >= size && region.3 / s >= size)
        .unwrap_or(1);
    // The antialiased bilinear filter reaches `max(1, shrink)` pixels beyond the
    // region's edges (shrink = region side / size at this scale); two more for rounding.
    let shrink = (region.2.max(region.3) / scale).div_ceil(size.max(1)).max(1);
    let reach = shrink + 2;
    let (x, y) = (region.0 / scale, region.1 / scale);
    let (left, top) = (x.saturating_sub(reach), y.saturating_sub(reach));
    let wanted = (
        left,
        top,
        (region.2 / scale + 1 + x - left).saturating_add(reach),
        (region.3 / scale + 1 + y - top).saturating_add(reach),
    );
    // The decoder reads the header first, refusing it beyond MAX_PIXELS.
    jpeg::with_decoder(|d| d.decode(bytes, scale, Some(wanted)))
}

/// `region` (full-size pixels) of a decoded `area`, resized (antialiased bilinear) to
/// `size × size`, channel-major.
pub fn area_planes(area: &Area, region: Region, size: u32) -> Vec<u8> {
    let s = area.scale.max(1) as f64;
    let (ox, oy) = (area.origin.0 as f64, area.origin.1 as f64);
    crop_planes(
        &area.pixels,
        (area.width, area.height),
        3,
        (
            region.0 as f64 / s - ox,
            region.1 as f64 / s - oy,
            region.2 as f64 / s,
            region.3 as f64 / s,
        ),
        size,
        Sampling::Bilinear,
    )
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
        let area = decode_region(&full, (0, 0, 64, 48), 16).unwrap();
        assert_eq!((area.width, area.height, area.scale), (32, 24, 2));
        let e = decode_rgb(&full[..full.len() / 2], 1).unwrap_err();
        assert!(e.contains("cannot decode"), "{e}");
    }

    #[test]
    fn a_region_decoded_alone_resizes_to_the_pixels_of_a_whole_decode() {
        let mut bytes = Vec::new();
        image::RgbImage::from_fn(331, 257, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, ((x ^ y) * 5) as u8])
        })
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
        let cases = [
            ((40, 30, 150, 120), 64),
            ((200, 100, 131, 157), 224),
            ((13, 200, 300, 57), 32),
            ((250, 7, 81, 81), 16),
            ((0, 0, 331, 257), 40),
        ];
        for (region, size) in cases {
            let part = decode_region(&bytes, region, size).unwrap();
            let whole = decode_rgb(&bytes, part.scale).unwrap();
            let (width, height) = whole.dimensions();
            if region.2 < 200 {
                assert!(part.width * part.height < width * height, "{region:?}: decoded whole");
            }
            let whole = Area {
                pixels: whole.into_raw(),
                width,
                height,
                origin: (0, 0),
                scale: part.scale,
            };
            let (a, b) = (area_planes(&part, region, size), area_planes(&whole, region, size));
            assert_eq!(a, b, "{region:?} at {size} px (1/{})", part.scale);
        }
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
