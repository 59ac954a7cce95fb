//! `sat-host data pack`: a listed split ([`Catalogue`]) into tar shards, their indexes
//! and the manifest. Images are stored as they are (JPEG and PNG bytes copied) unless
//! `resize` asks for a smaller shorter side; CIFAR's raw pixels become PNG. Each shard is
//! written under a temporary name and renamed when whole, and the manifest last, so an
//! interrupted pack leaves no shard that looks finished and no manifest.
use super::tar;
use super::{
    AnnotationFlags, Manifest, ShardEntry, ShardIndex, SplitManifest, FORMAT, MANIFEST, VERSION,
};
use crate::catalogue::{Catalogue, Entry, ImageSource};
use crate::config::OnCorrupt;
use crate::decode::{decode_bytes, parallel_map_with};
use crate::error::{read, DataError};
use crate::Split;
use image::{DynamicImage, GenericImageView, ImageFormat};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Samples per shard.
    pub shard_size: usize,
    /// Resize images whose shorter side is longer than this (aspect kept).
    pub resize: Option<u32>,
    /// JPEG quality of re-encoded images.
    pub quality: u8,
    /// A sample that cannot be packed: an error, or skipped and counted.
    pub on_corrupt: OnCorrupt,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            shard_size: 1000,
            resize: None,
            quality: 90,
            on_corrupt: OnCorrupt::Error,
        }
    }
}

/// What a pack wrote.
#[derive(Debug, Clone)]
pub struct PackReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Samples skipped (`on_corrupt = skip`), with the reason.
    pub skipped: Vec<String>,
}

/// One sample's files: `(extension, bytes)` in tar order.
struct Encoded {
    key: String,
    files: Vec<(&'static str, Vec<u8>)>,
}

/// `image` with its shorter side at most `side` (Catmull-Rom, aspect kept).
fn shrink(image: DynamicImage, side: Option<u32>) -> DynamicImage {
    let (w, h) = image.dimensions();
    match side {
        Some(s) if w.min(h) > s => {
            let scale = s as f64 / w.min(h) as f64;
            let (nw, nh) = (
                ((w as f64 * scale).round() as u32).max(1),
                ((h as f64 * scale).round() as u32).max(1),
            );
            image.resize_exact(nw, nh, image::imageops::FilterType::CatmullRom)
        }
        _ => image,
    }
}

fn encode(image: &DynamicImage, format: ImageFormat, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            image
                .to_rgb8()
                .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut out, quality,
                ))
        }
        _ => image.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png),
    }
    .map_err(|e| format!("cannot encode the image: {e}"))?;
    Ok(out)
}

/// An image as stored: extension, bytes, its size and the original's.
type Stored = (&'static str, Vec<u8>, (u32, u32), (u32, u32));

/// The stored image of `entry`.
fn stored_image(entry: &Entry, options: &PackOptions) -> Result<Stored, String> {
    match &entry.image {
        ImageSource::Pixels { rgb, side } => {
            let hwc = crate::catalogue::chw_to_hwc(rgb, *side);
            let image = DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(*side, *side, hwc).ok_or("bad pixel record")?,
            );
            let image = shrink(image, options.resize);
            let size = image.dimensions();
            Ok((
                "png",
                encode(&image, ImageFormat::Png, options.quality)?,
                size,
                (*side, *side),
            ))
        }
        ImageSource::File(path) => {
            let bytes = read(path, sat_input::Kind::Image).map_err(|e| e.to_string())?;
            let format =
                image::guess_format(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            let ext = match format {
                ImageFormat::Jpeg => "jpg",
                ImageFormat::Png => "png",
                other => {
                    return Err(format!(
                        "{}: {other:?} images are not stored; use JPEG or PNG",
                        path.display()
                    ))
                }
            };
            // Decoded once: a corrupt image is found now, not in the middle of training.
            let image = decode_bytes(&bytes).map_err(|m| format!("{}: {m}", path.display()))?;
            let (w, h) = image.dimensions();
            if w == 0 || h == 0 {
                return Err(format!("{}: empty image", path.display()));
            }
            match options.resize {
                Some(s) if w.min(h) > s => {
                    let image = shrink(image, Some(s));
                    let size = image.dimensions();
                    Ok((ext, encode(&image, format, options.quality)?, size, (w, h)))
                }
                _ => Ok((ext, bytes, (w, h), (w, h))),
            }
        }
    }
}

/// Encodes one sample: its image, label, boxes (scaled to the stored image) and mask.
fn encode_entry(entry: &Entry, options: &PackOptions) -> Result<Encoded, String> {
    let (ext, image, (w, h), (ow, oh)) = stored_image(entry, options)?;
    let mut files = vec![
        (ext, image),
        ("cls", format!("{}", entry.label).into_bytes()),
    ];
    let boxes = entry.boxes.read().map_err(|e| e.to_string())?;
    if !boxes.is_empty() {
        let (sx, sy) = (w as f32 / ow as f32, h as f32 / oh as f32);
        let scaled: Vec<[f32; 4]> = boxes
            .iter()
            .filter_map(|b| {
                let s = [
                    (b[0] * sx).clamp(0.0, w as f32),
                    (b[1] * sy).clamp(0.0, h as f32),
                    (b[2] * sx).clamp(0.0, w as f32),
                    (b[3] * sy).clamp(0.0, h as f32),
                ];
                (s[2] > s[0] && s[3] > s[1]).then_some(s)
            })
            .collect();
        let json = serde_json::json!({ "size": [w, h], "boxes": scaled });
        files.push(("boxes.json", json.to_string().into_bytes()));
    }
    if let Some(mask_path) = &entry.mask {
        let bytes = read(mask_path, sat_input::Kind::Image).map_err(|e| e.to_string())?;
        let mask = decode_bytes(&bytes).map_err(|m| format!("{}: {m}", mask_path.display()))?;
        if mask.dimensions() != (ow, oh) {
            return Err(format!(
                "{}: the mask is {}×{} but its image is {ow}×{oh}",
                mask_path.display(),
                mask.width(),
                mask.height()
            ));
        }
        let mask = DynamicImage::ImageLuma8(mask.to_luma8());
        let mask = if (w, h) == (ow, oh) {
            mask
        } else {
            mask.resize_exact(w, h, image::imageops::FilterType::Nearest)
        };
        files.push((
            "mask.png",
            encode(&mask, ImageFormat::Png, options.quality)?,
        ));
    }
    Ok(Encoded {
        key: entry.key.clone(),
        files,
    })
}

/// Writes one shard (`relative` inside `out`) from its samples; returns its manifest
/// entry.
fn write_shard(out: &Path, relative: &str, samples: &[Encoded]) -> Result<ShardEntry, DataError> {
    let path = out.join(relative);
    let partial = path.with_extension("tar.partial");
    let file = std::fs::File::create(&partial).map_err(|e| DataError::io(&partial, e))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut hasher = Sha256::new();
    let mut at = 0u64;
    let mut index = Vec::with_capacity(samples.len());
    let mut put = |bytes: &[u8], at: &mut u64| -> Result<(), DataError> {
        hasher.update(bytes);
        *at += bytes.len() as u64;
        writer
            .write_all(bytes)
            .map_err(|e| DataError::io(&partial, e))
    };
    for sample in samples {
        let start = at;
        for (ext, data) in &sample.files {
            let name = format!("{}.{ext}", sample.key);
            let header =
                tar::header(&name, data.len() as u64).map_err(|m| DataError::format(&path, m))?;
            put(&header, &mut at)?;
            put(data, &mut at)?;
            let pad = (tar::padded(data.len() as u64) - data.len() as u64) as usize;
            put(&vec![0u8; pad], &mut at)?;
        }
        index.push((sample.key.clone(), start, at - start));
    }
    put(&[0u8; 1024], &mut at)?;
    let file = writer
        .into_inner()
        .map_err(|e| DataError::io(&partial, e.into_error()))?;
    file.sync_all().map_err(|e| DataError::io(&partial, e))?;
    let index_relative = relative.replace(".tar", ".idx.json");
    write_atomically(
        &out.join(&index_relative),
        serde_json::to_vec(&ShardIndex { samples: index }).expect("an index serialises"),
    )?;
    std::fs::rename(&partial, &path).map_err(|e| DataError::io(&path, e))?;
    Ok(ShardEntry {
        tar: relative.to_string(),
        index: index_relative,
        samples: samples.len() as u64,
        bytes: at,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: Vec<u8>) -> Result<(), DataError> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes).map_err(|e| DataError::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| DataError::io(path, e))
}

/// Packs `splits` (each listed) of format `source` into `out`, which must not hold a
/// manifest yet.
pub fn pack(
    splits: Vec<(Split, Catalogue)>,
    source: &str,
    out: &Path,
    options: &PackOptions,
    interrupted: &dyn Fn() -> bool,
) -> Result<PackReport, DataError> {
    if options.shard_size == 0 {
        return Err(DataError::Config("--shard-size must be at least 1".into()));
    }
    if out.join(MANIFEST).exists() {
        return Err(DataError::format(
            out,
            "already holds a packed dataset (manifest.json); choose another --out or remove it",
        ));
    }
    let classes = splits
        .first()
        .map(|(_, c)| c.class_names.clone())
        .ok_or_else(|| DataError::Config("nothing to pack".into()))?;
    let mut annotations = AnnotationFlags::default();
    let mut manifest_splits = BTreeMap::new();
    let mut skipped = Vec::new();
    for (split, catalogue) in &splits {
        if catalogue.class_names != classes {
            return Err(DataError::Config(
                "the splits disagree on the classes".into(),
            ));
        }
        annotations.boxes |= catalogue.annotations.boxes;
        annotations.masks |= catalogue.annotations.masks;
        let name = super::split_name(*split);
        let packed = pack_split(catalogue, name, out, options, interrupted, &mut skipped)?;
        manifest_splits.insert(name.to_string(), packed);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: source.into(),
        resize: options.resize,
        classes,
        annotations,
        splits: manifest_splits,
    };
    write_atomically(
        &out.join(MANIFEST),
        serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"),
    )?;
    Ok(PackReport { manifest, skipped })
}

/// Packs one split into `out/<name>/NNNNNN.tar` shards of `options.shard_size` samples
/// (encoded in parallel, a shard's worth at a time); the skipped samples' reasons go to
/// `skipped`.
fn pack_split(
    catalogue: &Catalogue,
    name: &str,
    out: &Path,
    options: &PackOptions,
    interrupted: &dyn Fn() -> bool,
    skipped: &mut Vec<String>,
) -> Result<SplitManifest, DataError> {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let bar = crate::progress::bar(
        catalogue.entries.len() as u64,
        "{prefix} [{bar:30}] {pos}/{len} ({per_sec}, {elapsed}<{eta})",
    );
    bar.set_prefix(format!("pack {name}"));
    let mut shards = Vec::new();
    let mut pending: Vec<Encoded> = Vec::new();
    let write = |samples: &[Encoded], shards: &mut Vec<ShardEntry>| -> Result<(), DataError> {
        let relative = format!("{name}/{:06}.tar", shards.len());
        shards.push(write_shard(out, &relative, samples)?);
        Ok(())
    };
    for chunk in catalogue.entries.chunks(options.shard_size) {
        if interrupted() {
            bar.abandon_with_message("interrupted");
            return Err(DataError::Config(
                "interrupted: no manifest was written, so the partial output is not a dataset"
                    .into(),
            ));
        }
        let encoded = parallel_map_with(chunk, &bar, |e| {
            Ok(encode_entry(e, options).map_err(|m| (e.key.clone(), m)))
        })?;
        for result in encoded {
            match result {
                Ok(sample) => pending.push(sample),
                Err((key, m)) if options.on_corrupt == OnCorrupt::Skip => {
                    log::warn!("skipped sample `{key}`: {m}");
                    skipped.push(format!("{key}: {m}"));
                }
                Err((key, m)) => return Err(DataError::Config(format!("sample `{key}`: {m}"))),
            }
        }
        while pending.len() >= options.shard_size {
            let rest = pending.split_off(options.shard_size);
            write(&pending, &mut shards)?;
            pending = rest;
        }
    }
    if !pending.is_empty() {
        write(&pending, &mut shards)?;
    }
    bar.finish_and_clear();
    let samples = shards.iter().map(|s| s.samples).sum();
    Ok(SplitManifest { samples, shards })
}
