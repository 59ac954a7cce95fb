//! A split as a list of samples still on disk: where each image is, its label, its
//! boxes and its mask. Every file format's reader lists its split as a [`Catalogue`];
//! the in-memory path decodes it ([`Catalogue::decode`]) and `sat-host data pack` writes
//! it into shards, so both read a format the same way.
use super::assemble::{scale_box, Annotations, Assembler, Sample, CHUNK};
use super::decode::{parallel_map_with, read_mask, read_rgb, Decoded};
use super::error::{read_text, DataError};
use super::Dataset;
use crate::config::MissingMasks;
use std::path::{Path, PathBuf};

/// A split's samples, not yet decoded.
pub struct Catalogue {
    /// The format's name (progress bars).
    pub format: &'static str,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
    /// The samples, in the format's order.
    pub entries: Vec<Entry>,
    /// Which annotations the split carries.
    pub annotations: Annotations,
}

/// One sample of a [`Catalogue`].
pub struct Entry {
    /// A name unique in the split, of letters, digits, `_` and `-` (no dot: WebDataset
    /// splits a file name into key and extension at the first dot).
    pub key: String,
    /// The image.
    pub image: ImageSource,
    /// Class index.
    pub label: i64,
    /// The boxes, in the original image's pixels.
    pub boxes: BoxSource,
    /// A segmentation mask file (grey, 255 = object) of the image's size.
    pub mask: Option<PathBuf>,
}

/// Where a sample's image is.
pub enum ImageSource {
    /// A JPEG or PNG file.
    File(PathBuf),
    /// RGB pixels, channel-major, of a `side × side` image held by the format itself
    /// (CIFAR's records).
    Pixels {
        /// `3 · side · side` bytes.
        rgb: Vec<u8>,
        /// The image's side.
        side: u32,
    },
}

/// Where a sample's boxes are (`x0, y0, x1, y1`, half-open, original pixels).
pub enum BoxSource {
    /// No boxes.
    None,
    /// Given by the format's own annotation file, already read.
    Inline(Vec<[f32; 4]>),
    /// A `.boxes.csv` or `.boxes.json` sidecar.
    Sidecar(PathBuf),
    /// A PASCAL VOC XML file (ILSVRC's per-image bounding boxes).
    Voc(PathBuf),
}

impl BoxSource {
    /// The boxes, each checked (`x1 > x0`, `y1 > y0`, finite); a bad box is an error
    /// naming the file and the box.
    pub fn read(&self) -> Result<Vec<[f32; 4]>, DataError> {
        match self {
            BoxSource::None => Ok(Vec::new()),
            BoxSource::Inline(boxes) => Ok(boxes.clone()),
            BoxSource::Sidecar(path) => super::image_folder::read_boxes(path),
            BoxSource::Voc(path) => super::imagenet::read_voc(path).map(|voc| voc.boxes),
        }
    }
}

impl Entry {
    /// An entry whose key is `<index>_<name>`, `name` cut to 60 characters and every
    /// character but letters, digits, `_` and `-` replaced by `_`.
    pub fn keyed(index: usize, name: &str, image: ImageSource, label: i64) -> Self {
        let clean: String = name
            .chars()
            .take(60)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            key: format!("{index:08}_{clean}"),
            image,
            label,
            boxes: BoxSource::None,
            mask: None,
        }
    }

    /// The image resized to `size × size`.
    pub fn read_rgb(&self, size: u32) -> Result<Decoded, DataError> {
        match &self.image {
            ImageSource::File(path) => read_rgb(path, size),
            ImageSource::Pixels { rgb, side } => {
                let hwc = chw_to_hwc(rgb, *side);
                let image = image::RgbImage::from_raw(*side, *side, hwc)
                    .expect("3·side² bytes make a side × side image");
                Ok(super::decode::resized_rgb(image, size))
            }
        }
    }
}

/// Channel-major (`CHW`) RGB bytes of a `side × side` image to interleaved (`HWC`).
pub fn chw_to_hwc(chw: &[u8], side: u32) -> Vec<u8> {
    let plane = (side * side) as usize;
    let mut out = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            out[3 * i + c] = chw[c * plane + i];
        }
    }
    out
}

impl Catalogue {
    /// Drops the entries without a mask when the split has masks and `missing` says
    /// skip.
    pub fn apply_missing_masks(&mut self, missing: MissingMasks) {
        if self.annotations.masks && missing == MissingMasks::Skip {
            self.entries.retain(|e| e.mask.is_some());
        }
    }

    /// Drops the entries `missing` says to (see [`Catalogue::apply_missing_masks`]) and
    /// decodes the rest ([`Catalogue::decode`]).
    pub fn load(
        mut self,
        size: i64,
        missing: MissingMasks,
        resize_masks: bool,
    ) -> Result<Dataset, DataError> {
        self.apply_missing_masks(missing);
        self.decode(size, resize_masks)
    }

    /// Decodes every entry at side `size` (in parallel) into an in-memory dataset,
    /// [`CHUNK`] entries at a time. A mask whose size differs from its image's is an
    /// error unless `resize_masks`.
    pub fn decode(self, size: i64, resize_masks: bool) -> Result<Dataset, DataError> {
        let bar = crate::progress::bar(
            self.entries.len() as u64,
            "{prefix} [{bar:30}] {pos}/{len} ({elapsed}<{eta})",
        );
        bar.set_prefix(self.format.to_string());
        let mut assembler = Assembler::new(self.entries.len(), size, self.annotations);
        for chunk in self.entries.chunks(CHUNK) {
            // A stop request (Ctrl-C, SIGTERM) ends decoding between chunks.
            crate::stop::check(self.format)?;
            let samples = parallel_map_with(chunk, &bar, |e| {
                let decoded = e.read_rgb(size as u32)?;
                let boxes = e
                    .boxes
                    .read()?
                    .into_iter()
                    .filter_map(|b| scale_box(b, decoded.scale, size))
                    .collect();
                let mask = e
                    .mask
                    .as_ref()
                    .map(|m| read_mask(m, size as u32, (!resize_masks).then_some(decoded.original)))
                    .transpose()?;
                Ok(Sample {
                    pixels: decoded.pixels,
                    label: e.label,
                    boxes,
                    mask,
                })
            });
            let samples = samples.inspect_err(|_| bar.abandon())?;
            assembler.push(samples);
        }
        bar.finish_and_clear();
        Ok(assembler.finish(self.class_names))
    }
}

/// The entries of a directory, sorted by name; an error names the directory, or the
/// entry that is a link looping or leading nowhere.
pub fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(sat_input::list(dir)?.into_iter().map(|e| e.path).collect())
}

/// The subdirectories of `dir`, sorted by name; a link loop among them (one that is
/// `dir`, a directory above it, or another of them) is an error naming it.
pub fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(sat_input::subdirectories(dir)?)
}

/// The sorted names of the directories in `dir` (the classes of an ImageFolder-like
/// layout); none is an error naming `dir`.
pub fn class_dirs(dir: &Path) -> Result<Vec<String>, DataError> {
    let names: Vec<String> = subdirectories(dir)?
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if names.is_empty() {
        return Err(DataError::format(dir, "no class directories"));
    }
    Ok(names)
}

/// Non-empty trimmed lines of a text file.
pub fn lines(path: &Path) -> Result<Vec<String>, DataError> {
    Ok(read_text(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_free_of_dots() {
        let a = Entry::keyed(3, "photo.v2 (1)", ImageSource::File("x".into()), 0);
        assert_eq!(a.key, "00000003_photo_v2__1_");
        let long = "n".repeat(200);
        assert_eq!(
            Entry::keyed(0, &long, ImageSource::File("x".into()), 0)
                .key
                .len(),
            69
        );
    }

    #[test]
    fn channel_major_pixels_interleave() {
        // 1×1 image: R=1, G=2, B=3.
        assert_eq!(chw_to_hwc(&[1, 2, 3], 1), vec![1, 2, 3]);
        // 2×1 rows of a 2×2 image: planes [r0 r1 r2 r3][g…][b…].
        let chw: Vec<u8> = (0..12).collect();
        assert_eq!(&chw_to_hwc(&chw, 2)[..6], &[0, 4, 8, 1, 5, 9]);
    }
}
