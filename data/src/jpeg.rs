//! JPEG decoding by libjpeg-turbo 3 through its TurboJPEG C API (`turbojpeg-sys`, built
//! from the bundled source), called directly because the safe `turbojpeg` crate does not
//! offer what the training crop needs: decoding a region only (`tj3SetCroppingRegion`),
//! as DALI decodes regions of interest. Rows below the region are never decoded, and
//! columns outside it are entropy-decoded but not transformed or colour-converted.
//!
//! This is the crate's only unsafe code: each call crosses into C with a handle that
//! this module owns, buffers it sized from the header it read, and a `// SAFETY:` line.
use std::ffi::CStr;
use std::ptr::NonNull;
use crate::decode::Area;
use turbojpeg_sys as tj;

/// What a JPEG header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Full-size width in pixels.
    pub width: u32,
    /// Full-size height in pixels.
    pub height: u32,
    /// The horizontal size of a minimum coded unit in full-size pixels (8, 16 or 32),
    /// or `None` when the chroma subsampling is not one TurboJPEG names (such images
    /// decode whole).
    pub mcu_width: Option<u32>,
}

/// The iMCU width of each TurboJPEG subsampling level (`TJSAMP_444` … `TJSAMP_441`):
/// turbojpeg.h's `tjMCUWidth`, a `static const` array the library does not export.
const MCU_WIDTH: [u32; 7] = [8, 16, 16, 8, 8, 32, 8];

/// Whether `bytes`, read marker by marker after the start-of-image marker, reach a frame
/// header (SOF0–SOF15 but DHT, JPG and DAC) before a scan, the end-of-image marker or
/// the end of the bytes.
fn declares_a_frame(bytes: &[u8]) -> bool {
    let mut at = 2;
    loop {
        if bytes.get(at) != Some(&0xFF) {
            return false;
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1; // a marker, after any fill bytes
        }
        let Some(&code) = bytes.get(at) else {
            return false;
        };
        at += 1;
        match code {
            0xC0..=0xCF if !matches!(code, 0xC4 | 0xC8 | 0xCC) => return true,
            0xD9 | 0xDA => return false,
            0x01 | 0xD0..=0xD7 => {} // standalone markers
            _ => {
                let Some(length) = bytes.get(at..at + 2) else {
                    return false;
                };
                let length = u16::from_be_bytes([length[0], length[1]]) as usize;
                if length < 2 {
                    return false;
                }
                at += length;
            }
        }
    }
}

/// A TurboJPEG decompressor instance. Not `Send` (it holds a raw pointer): each thread
/// makes its own.
pub struct Decoder {
    handle: NonNull<std::ffi::c_void>,
}

/// `dimension` at `1 / scale`, rounded up (TurboJPEG's `TJSCALED`).
pub fn scaled(dimension: u32, scale: u32) -> u32 {
    dimension.div_ceil(scale.max(1))
}

impl Decoder {
    /// A new decompressor; fails only when libjpeg-turbo cannot allocate one.
    pub fn new() -> Result<Decoder, String> {
        // SAFETY: tj3Init takes an init type and returns an owned handle or null.
        let raw = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as libc::c_int) };
        let handle = NonNull::new(raw).ok_or("libjpeg-turbo could not make a decompressor")?;
        Ok(Decoder { handle })
    }

    /// libjpeg-turbo's message for the last failed call on this handle.
    fn error(&mut self) -> String {
        // SAFETY: the handle is live; tj3GetErrorStr returns a NUL-terminated string
        // owned by the handle (or a static one), copied out before the next call.
        let message = unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle.as_ptr())) };
        format!("cannot decode image: {}", message.to_string_lossy().trim())
    }

    fn get(&mut self, parameter: tj::TJPARAM) -> libc::c_int {
        // SAFETY: the handle is live; tj3Get reads one of its fields.
        unsafe { tj::tj3Get(self.handle.as_ptr(), parameter as libc::c_int) }
    }

    /// Reads the header of `bytes` (nothing is decoded or allocated for the pixels),
    /// refusing one that declares more than [`crate::decode::MAX_PIXELS`] pixels.
    pub fn header(&mut self, bytes: &[u8]) -> Result<Header, String> {
        if !declares_a_frame(bytes) {
            // TurboJPEG reports success for a stream without a frame (tables only) and
            // keeps the previous image's dimensions: refused before it is asked.
            return Err("cannot decode image: no frame header before the first scan or the end (a tables-only, cut or corrupt JPEG stream)".into());
        }
        // SAFETY: the handle is live and `bytes` is a readable slice of `bytes.len()`
        // bytes for the duration of the call; libjpeg-turbo keeps no pointer to it.
        let status = unsafe {
            tj::tj3DecompressHeader(self.handle.as_ptr(), bytes.as_ptr(), bytes.len() as _)
        };
        if status != 0 {
            return Err(self.error());
        }
        let (width, height) = (
            self.get(tj::TJPARAM_TJPARAM_JPEGWIDTH),
            self.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        if width <= 0 || height <= 0 {
            return Err("cannot decode image: the header declares no pixels".into());
        }
        crate::decode::declared_size(width as u32, height as u32)?;
        let subsampling = self.get(tj::TJPARAM_TJPARAM_SUBSAMP);
        let mcu_width = usize::try_from(subsampling)
            .ok()
            .and_then(|s| MCU_WIDTH.get(s).copied());
        Ok(Header {
            width: width as u32,
            height: height as u32,
            mcu_width,
        })
    }

    /// Decodes `bytes` at `1 / scale` (1, 2, 4 or 8) of its size, only the part covering
    /// `region` (`(x, y, width, height)` in the scaled image's pixels) when one is
    /// given: the area decoded starts at or left of `x` (at a whole coding unit) and
    /// covers the region. A corrupt JPEG (libjpeg-turbo's warnings too) is an error.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        scale: u32,
        region: Option<(u32, u32, u32, u32)>,
    ) -> Result<Area, String> {
        let header = self.header(bytes)?;
        let scale = scale.max(1);
        let factor = tj::tjscalingfactor {
            num: 1,
            denom: scale as libc::c_int,
        };
        // SAFETY: the handle is live; the factor is passed by value.
        if unsafe { tj::tj3SetScalingFactor(self.handle.as_ptr(), factor) } != 0 {
            return Err(self.error());
        }
        let (sw, sh) = (scaled(header.width, scale), scaled(header.height, scale));
        let area = match (region, header.mcu_width) {
            (Some((x, y, w, h)), Some(mcu)) => {
                let unit = scaled(mcu, scale).max(1);
                let left = (x.min(sw - 1) / unit) * unit;
                let top = y.min(sh - 1);
                let right = x.saturating_add(w).clamp(left + 1, sw);
                let bottom = y.saturating_add(h).clamp(top + 1, sh);
                (left, top, right - left, bottom - top)
            }
            _ => (0, 0, sw, sh),
        };
        let crop = if area == (0, 0, sw, sh) {
            tj::tjregion { x: 0, y: 0, w: 0, h: 0 }
        } else {
            tj::tjregion {
                x: area.0 as libc::c_int,
                y: area.1 as libc::c_int,
                w: area.2 as libc::c_int,
                h: area.3 as libc::c_int,
            }
        };
        // SAFETY: the handle is live and has read this JPEG's header (above), which
        // tj3SetCroppingRegion checks the region against; the region is passed by value.
        if unsafe { tj::tj3SetCroppingRegion(self.handle.as_ptr(), crop) } != 0 {
            return Err(self.error());
        }
        let mut pixels = vec![0u8; 3 * area.2 as usize * area.3 as usize];
        // SAFETY: `pixels` holds `area.2 · area.3` RGB pixels, which is what
        // tj3Decompress8 writes for this header, scale and cropping region with a pitch
        // of 0 (`3 · area.2`); `bytes` is readable for the call; neither is kept.
        let status = unsafe {
            tj::tj3Decompress8(
                self.handle.as_ptr(),
                bytes.as_ptr(),
                bytes.len() as _,
                pixels.as_mut_ptr(),
                0,
                tj::TJPF_TJPF_RGB,
            )
        };
        if status != 0 {
            return Err(self.error());
        }
        Ok(Area {
            pixels,
            width: area.2,
            height: area.3,
            origin: (area.0, area.1),
            scale,
        })
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: the handle was made by tj3Init, is owned by this value alone and is
        // not used after this call.
        unsafe { tj::tj3Destroy(self.handle.as_ptr()) }
    }
}

thread_local! {
    /// Each thread's decompressor.
    static DECODER: std::cell::RefCell<Option<Decoder>> = const { std::cell::RefCell::new(None) };
}

/// `f` with this thread's decompressor (made on first use).
pub fn with_decoder<T>(f: impl FnOnce(&mut Decoder) -> Result<T, String>) -> Result<T, String> {
    DECODER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(Decoder::new()?);
        }
        f(slot.as_mut().expect("made above"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4:2:0 JPEG (the `image` crate's encoder) with structure in every channel.
    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
        })
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
        out
    }

    #[test]
    fn a_region_decodes_to_the_same_pixels_as_the_whole_image() {
        let bytes = jpeg(203, 157);
        let mut decoder = Decoder::new().unwrap();
        let header = decoder.header(&bytes).unwrap();
        assert_eq!((header.width, header.height), (203, 157));
        let mcu = header.mcu_width.unwrap();
        assert!(mcu == 8 || mcu == 16, "{mcu}");
        for scale in [1, 2, 4] {
            let whole = decoder.decode(&bytes, scale, None).unwrap();
            assert_eq!(
                (whole.width, whole.height, whole.origin),
                (scaled(203, scale), scaled(157, scale), (0, 0))
            );
            for region in [(37, 21, 60, 71), (0, 0, 5, 5), (90, 100, 200, 200), (17, 3, 1, 1)] {
                let part = decoder.decode(&bytes, scale, Some(region)).unwrap();
                let (x0, y0) = part.origin;
                // Starts at a whole coding unit at or left of the region, and covers it.
                assert_eq!(x0 % scaled(mcu, scale).max(1), 0);
                assert!(x0 <= region.0.min(whole.width - 1) && y0 == region.1.min(whole.height - 1));
                assert!(x0 + part.width >= (region.0 + region.2).min(whole.width));
                assert!(y0 + part.height >= (region.1 + region.3).min(whole.height));
                for row in 0..part.height {
                    let at = |x: u32, y: u32, w: u32| 3 * (y * w + x) as usize;
                    let a = at(0, row, part.width);
                    let b = at(x0, y0 + row, whole.width);
                    let n = 3 * part.width as usize;
                    assert_eq!(
                        part.pixels[a..a + n],
                        whole.pixels[b..b + n],
                        "scale 1/{scale}, region {region:?}, row {row}"
                    );
                }
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_jpegs_are_errors_naming_the_decoder() {
        let bytes = jpeg(64, 64);
        let mut decoder = Decoder::new().unwrap();
        let e = decoder.decode(&bytes[..bytes.len() / 2], 1, None).err().unwrap();
        assert!(e.starts_with("cannot decode image:"), "{e}");
        let e = decoder.header(&[0xFF, 0xD8, 0xFF, 0xE0, 1, 2]).err().unwrap();
        assert!(e.starts_with("cannot decode image:"), "{e}");
        // A stream with tables but no frame is refused, not read with the previous
        // image's header (which TurboJPEG would keep).
        decoder.header(&bytes).unwrap();
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let mut tables = bytes[..sof].to_vec();
        tables.extend(&bytes[sof + 2 + u16::from_be_bytes([bytes[sof + 2], bytes[sof + 3]]) as usize..sos]);
        tables.extend([0xFF, 0xD9]);
        let e = decoder.header(&tables).err().unwrap();
        assert!(e.contains("no frame header"), "{e}");
        assert!(decoder.decode(&tables, 1, None).is_err());
        // The handle is still usable after errors.
        assert_eq!(decoder.decode(&bytes, 8, None).unwrap().width, 8);
    }
}
