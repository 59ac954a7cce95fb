//! Oxford Flower-17 (`17flowers/`): `jpg/image_0001.jpg` … `jpg/image_1360.jpg`, 80
//! images per class in id order (label = (id − 1) / 80), and, for a subset, trimaps in
//! `trimaps/image_XXXX.png`.
//!
//! Split rule (the official `datasplits.mat` is not read): within every class, the
//! images with (id − 1) mod 4 = 3 form the test split (20 per class), the other 60 the
//! training split. Trimaps are read as grey levels, `mask = level / 255` (object 1,
//! background 0, the undecided band in between), and resized with nearest sampling.
//! Images without a trimap are kept with no mask (the `masks` plugin's `fallback`
//! applies) or skipped, as `[data] missing_masks` says.
use super::assemble::Annotations;
use super::catalogue::{sorted_entries, Catalogue, Entry, ImageSource};
use super::error::DataError;
use super::{Dataset, Split};
use crate::config::MissingMasks;
use std::path::Path;

/// The class names, in label order.
pub const CLASS_NAMES: [&str; 17] = [
    "daffodil",
    "snowdrop",
    "lily-valley",
    "bluebell",
    "crocus",
    "iris",
    "tigerlily",
    "tulip",
    "fritillary",
    "sunflower",
    "daisy",
    "colts-foot",
    "dandelion",
    "cowslip",
    "buttercup",
    "windflower",
    "pansy",
];

/// Whether image `id` (1-based) belongs to the test split.
pub fn in_test_split(id: u32) -> bool {
    (id - 1) % 4 == 3
}

/// Reads the Flower-17 `split` under `root` at side `size`.
pub fn flowers17(
    root: &Path,
    split: Split,
    size: i64,
    missing: MissingMasks,
    resize_masks: bool,
) -> Result<Dataset, DataError> {
    catalogue(root, split)?.load(size, missing, resize_masks)
}

/// The Flower-17 `split` under `root`, listed.
pub fn catalogue(root: &Path, split: Split) -> Result<Catalogue, DataError> {
    let jpg = root.join("jpg");
    let mut ids = Vec::new();
    for path in sorted_entries(&jpg)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(id) = name
            .strip_prefix("image_")
            .and_then(|n| n.strip_suffix(".jpg"))
        else {
            continue;
        };
        let id: u32 = id
            .parse()
            .map_err(|_| DataError::format(&path, "expected a name of the form image_XXXX.jpg"))?;
        if !(1..=17 * 80).contains(&id) {
            return Err(DataError::format(
                &path,
                format!("image id {id} is outside 1-1360"),
            ));
        }
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(DataError::format(&jpg, "no image_XXXX.jpg files"));
    }
    ids.sort_unstable();
    let want_test = split == Split::Test;
    let mut entries = Vec::new();
    for id in ids.into_iter().filter(|&id| in_test_split(id) == want_test) {
        let trimap = root.join("trimaps").join(format!("image_{id:04}.png"));
        let mut entry = Entry::keyed(
            entries.len(),
            &format!("image_{id:04}"),
            ImageSource::File(jpg.join(format!("image_{id:04}.jpg"))),
            ((id - 1) / 80) as i64,
        );
        entry.mask = trimap.exists().then_some(trimap);
        entries.push(entry);
    }
    Ok(Catalogue {
        format: "flowers17",
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        entries,
        annotations: Annotations {
            boxes: false,
            masks: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn layout(root: &Path) {
        std::fs::create_dir_all(root.join("jpg")).unwrap();
        std::fs::create_dir_all(root.join("trimaps")).unwrap();
        for id in [1u32, 4, 80, 81, 84, 1360] {
            RgbImage::from_pixel(50, 40, Rgb([id as u8, 0, 0]))
                .save(root.join(format!("jpg/image_{id:04}.jpg")))
                .unwrap();
        }
        // An asymmetric trimap: object on the left third, undecided band, background.
        let trimap = GrayImage::from_fn(50, 40, |x, _| {
            Luma([if x < 17 {
                255
            } else if x < 20 {
                128
            } else {
                0
            }])
        });
        trimap.save(root.join("trimaps/image_0001.png")).unwrap();
        trimap.save(root.join("trimaps/image_0084.png")).unwrap();
        std::fs::write(root.join("jpg/files.txt"), "not an image").unwrap();
    }

    #[test]
    fn labels_split_and_trimaps_follow_the_documented_rules() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let train = flowers17(dir.path(), Split::Train, 20, MissingMasks::Keep, false).unwrap();
        // Ids 1 and 81 train ((id − 1) mod 4 ≠ 3); 4, 80, 84 and 1360 test.
        assert_eq!(Vec::<i64>::try_from(&train.labels).unwrap(), vec![0, 1]);
        let (masks, present) = train.masks.as_ref().unwrap();
        assert_eq!(Vec::<bool>::try_from(present).unwrap(), vec![true, false]);
        assert_eq!(masks.size(), vec![2, 1, 20, 20]);
        assert_eq!(masks.int64_value(&[0, 0, 10, 0]), 255);
        assert_eq!(masks.int64_value(&[0, 0, 10, 19]), 0);
        assert_eq!(train.class_names[16], "pansy");
        let test = flowers17(dir.path(), Split::Test, 20, MissingMasks::Keep, false).unwrap();
        assert_eq!(
            Vec::<i64>::try_from(&test.labels).unwrap(),
            vec![0, 0, 1, 16]
        );
        let test = flowers17(dir.path(), Split::Test, 20, MissingMasks::Skip, false).unwrap();
        assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), vec![1]);
        assert!(in_test_split(84) && !in_test_split(81));
    }

    #[test]
    fn corrupt_trimaps_and_odd_names_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let trimap = dir.path().join("trimaps/image_0084.png");
        let bytes = std::fs::read(&trimap).unwrap();
        std::fs::write(&trimap, &bytes[..bytes.len() - 20]).unwrap();
        let e = flowers17(dir.path(), Split::Test, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_0084.png") && e.contains("cannot decode"),
            "{e}"
        );
        std::fs::write(dir.path().join("jpg/image_99999.jpg"), "x").unwrap();
        let e = flowers17(dir.path(), Split::Train, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("image_99999.jpg: image id 99999 is outside"),
            "{e}"
        );
    }
}
