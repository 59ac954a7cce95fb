//! ImageFolder: bring your own data. `root/train/<class>/<image>` and `root/test/<class>/<image>`
//! (`val/` when there is no `test/`); classes are the sorted directory names of `train/`.
//! Images are JPEG or PNG, resized to `image_size`.
//!
//! Optional sidecar annotations beside an image `photo.jpg`:
//! - `photo.mask.png`: a segmentation mask (grey level / 255, object = white) of the
//!   image's size (another size is an error unless `[data] resize_masks = true`);
//! - `photo.boxes.csv`: one box per line, `x0,y0,x1,y1` in the original image's pixels
//!   (half-open; a first line of four names such as `x0,y0,x1,y1` is a header; any
//!   other line that is not four numbers is an error naming the line), or `photo.boxes.json`:
//!   `[[x0, y0, x1, y1], ...]`.
//!
//! If any image of the split has a mask, the dataset carries masks; images without one
//! are kept (the `masks` plugin's `fallback` applies) or skipped per `[data]
//! missing_masks`. The same holds for boxes (images without boxes have none).
use super::assemble::Annotations;
use super::catalogue::{
    class_dirs, sorted_entries, subdirectories, BoxSource, Catalogue, Entry, ImageSource,
};
use super::error::{read_text, DataError};
use super::{Dataset, Split};
use crate::config::MissingMasks;
use std::path::{Path, PathBuf};

fn is_image(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    let Some(name) = name else { return false };
    !name.ends_with(".mask.png") && [".jpg", ".jpeg", ".png"].iter().any(|e| name.ends_with(e))
}

/// Reads the ImageFolder `split` under `root` at side `size`.
pub fn image_folder(
    root: &Path,
    split: Split,
    size: i64,
    missing: MissingMasks,
    resize_masks: bool,
) -> Result<Dataset, DataError> {
    catalogue(root, split)?.load(size, missing, resize_masks)
}

/// The ImageFolder `split` under `root`, listed.
pub fn catalogue(root: &Path, split: Split) -> Result<Catalogue, DataError> {
    let class_names = class_dirs(&root.join("train"))?;
    let dir = match split {
        Split::Train => root.join("train"),
        Split::Test if !root.join("test").exists() && root.join("val").exists() => root.join("val"),
        Split::Test => root.join("test"),
    };
    let mut entries = Vec::new();
    for class_dir in subdirectories(&dir)? {
        let before = entries.len();
        let name = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let Some(label) = class_names.iter().position(|c| Some(c) == name.as_ref()) else {
            return Err(DataError::format(
                &class_dir,
                "this class is not among the training classes",
            ));
        };
        for image in sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| is_image(p))
        {
            let stem = image.with_extension("");
            let sidecar = |suffix: &str| {
                let p = PathBuf::from(format!("{}{suffix}", stem.display()));
                p.exists().then_some(p)
            };
            let boxes = sidecar(".boxes.csv").or_else(|| sidecar(".boxes.json"));
            let key_name = format!(
                "{}_{}",
                name.as_deref().unwrap_or_default(),
                stem.file_name().unwrap_or_default().to_string_lossy()
            );
            let mut entry = Entry::keyed(
                entries.len(),
                &key_name,
                ImageSource::File(image),
                label as i64,
            );
            entry.mask = sidecar(".mask.png");
            entry.boxes = boxes.map_or(BoxSource::None, BoxSource::Sidecar);
            entries.push(entry);
        }
        if entries.len() == before {
            return Err(DataError::format(
                &class_dir,
                "an empty class directory (no .jpg, .jpeg or .png): remove it, or add its images",
            ));
        }
    }
    if entries.is_empty() {
        return Err(DataError::format(
            &dir,
            "no images (.jpg, .jpeg, .png) in class directories",
        ));
    }
    let annotations = Annotations {
        boxes: entries.iter().any(|e| !matches!(e.boxes, BoxSource::None)),
        masks: entries.iter().any(|e| e.mask.is_some()),
    };
    Ok(Catalogue {
        format: "image-folder",
        class_names,
        entries,
        annotations,
    })
}

/// Whether the CSV fields are a header: four fields, each starting with a letter or `_`
/// (no digit, sign or point where a number belongs).
fn is_header(fields: &[&str]) -> bool {
    fields.len() == 4
        && fields
            .iter()
            .all(|f| f.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

/// Boxes from a `.boxes.csv` or `.boxes.json` sidecar.
pub(crate) fn read_boxes(path: &Path) -> Result<Vec<[f32; 4]>, DataError> {
    let text = read_text(path)?;
    let boxes: Vec<[f32; 4]> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| {
            DataError::record(
                path,
                format!("line {}, column {}", e.line(), e.column()),
                format!("expected [[x0, y0, x1, y1], ...]: {e}"),
            )
        })?
    } else {
        let mut boxes = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
            match parsed {
                Ok(v) if v.len() == 4 => boxes.push([v[0], v[1], v[2], v[3]]),
                // A header: a first line of four names (each starts with a letter), so
                // that a malformed first row of numbers is an error, not skipped.
                Err(_) if i == 0 && is_header(&fields) => continue,
                _ => {
                    return Err(DataError::record(
                        path,
                        format!("line {}", i + 1),
                        format!("expected four numbers x0,y0,x1,y1, found `{line}`"),
                    ))
                }
            }
        }
        boxes
    };
    for (i, b) in boxes.iter().enumerate() {
        if !(b[2] > b[0] && b[3] > b[1]) || b.iter().any(|v| !v.is_finite()) {
            return Err(DataError::record(
                path,
                format!("box {}", i + 1),
                format!("{b:?} is not a box with x1 > x0 and y1 > y0"),
            ));
        }
    }
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn layout(root: &Path) {
        for (split, class, name) in [
            ("train", "cat", "a.png"),
            ("train", "cat", "b.jpg"),
            ("train", "dog", "c.png"),
            ("test", "dog", "d.png"),
        ] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            RgbImage::from_pixel(40, 20, Rgb([0, 200, 0]))
                .save(dir.join(name))
                .unwrap();
        }
        std::fs::write(
            root.join("train/cat/a.boxes.csv"),
            "x0,y0,x1,y1\n0,0,10,10\n20,5,40,20\n",
        )
        .unwrap();
        std::fs::write(root.join("train/dog/c.boxes.json"), "[[4, 2, 8, 6]]").unwrap();
        GrayImage::from_fn(40, 20, |x, _| Luma([if x < 10 { 255 } else { 0 }]))
            .save(root.join("train/cat/a.mask.png"))
            .unwrap();
        std::fs::write(root.join("train/cat/notes.txt"), "ignored").unwrap();
    }

    #[test]
    fn reads_classes_sidecar_boxes_and_masks() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let train = image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, false).unwrap();
        assert_eq!(train.class_names, vec!["cat", "dog"]);
        assert_eq!(Vec::<i64>::try_from(&train.labels).unwrap(), vec![0, 0, 1]);
        let boxes = train.boxes.as_ref().unwrap();
        assert_eq!(boxes.size(), vec![3, 2, 4]);
        // 40×20 → 20×20: x halves, y stays.
        assert_eq!(
            Vec::<f32>::try_from(boxes.get(0).reshape([-1])).unwrap(),
            vec![0.0, 0.0, 5.0, 10.0, 10.0, 5.0, 20.0, 20.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(boxes.get(1).get(0)).unwrap(),
            vec![-1.0; 4]
        );
        assert_eq!(
            Vec::<f32>::try_from(boxes.get(2).get(0)).unwrap(),
            vec![2.0, 2.0, 4.0, 6.0]
        );
        let (masks, present) = train.masks.as_ref().unwrap();
        assert_eq!(
            Vec::<bool>::try_from(present).unwrap(),
            vec![true, false, false]
        );
        assert_eq!(masks.int64_value(&[0, 0, 3, 4]), 255);
        assert_eq!(masks.int64_value(&[0, 0, 3, 6]), 0);
        let skipped =
            image_folder(dir.path(), Split::Train, 20, MissingMasks::Skip, false).unwrap();
        assert_eq!(skipped.len(), 1);
        let test = image_folder(dir.path(), Split::Test, 20, MissingMasks::Keep, false).unwrap();
        assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), vec![1]);
        assert!(test.boxes.is_none() && test.masks.is_none());
    }

    #[test]
    fn bad_sidecars_and_unknown_classes_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        std::fs::write(
            dir.path().join("train/cat/a.boxes.csv"),
            "0,0,10,10\n1,2,3\n",
        )
        .unwrap();
        let e = image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.boxes.csv, line 2: expected four numbers"),
            "{e}"
        );
        std::fs::write(dir.path().join("train/cat/a.boxes.csv"), "5,5,1,1\n").unwrap();
        let e = image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.boxes.csv, box 1"), "{e}");
        std::fs::write(dir.path().join("train/dog/c.boxes.json"), "[[4, 2, 8]]").unwrap();
        std::fs::remove_file(dir.path().join("train/cat/a.boxes.csv")).unwrap();
        let e = image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.boxes.json, line 1"), "{e}");
        std::fs::create_dir_all(dir.path().join("test/bird")).unwrap();
        let e = image_folder(dir.path(), Split::Test, 20, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bird: this class is not among the training classes"),
            "{e}"
        );
    }

    #[test]
    fn link_loops_and_special_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let read = || catalogue(dir.path(), Split::Train).map(|c| c.entries.len());
        let lion = dir.path().join("train/lion");
        std::os::unix::fs::symlink(dir.path().join("train"), &lion).unwrap();
        let e = read().unwrap_err().to_string();
        assert!(e.contains("train/lion") && e.contains("link loop"), "{e}");
        std::fs::remove_file(&lion).unwrap();
        std::os::unix::fs::symlink(&lion, &lion).unwrap();
        let e = read().unwrap_err().to_string();
        assert!(e.contains("train/lion") && e.contains("loops back"), "{e}");
        std::fs::remove_file(&lion).unwrap();
        let image = dir.path().join("train/dog/c.png");
        std::fs::remove_file(&image).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&image).status();
        assert!(made.unwrap().success());
        let e = image_folder(dir.path(), Split::Train, 16, MissingMasks::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.png") && e.contains("is a FIFO"), "{e}");
    }

    #[test]
    fn a_mask_of_another_size_an_empty_class_and_a_numeric_first_line_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let read = || image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, false);
        // A mask for another picture: refused, unless resize_masks says otherwise.
        GrayImage::from_pixel(41, 20, Luma([255]))
            .save(dir.path().join("train/cat/a.mask.png"))
            .unwrap();
        let e = read().unwrap_err().to_string();
        assert!(
            e.contains("a.mask.png")
                && e.contains("41×20")
                && e.contains("40×20")
                && e.contains("resize_masks"),
            "{e}"
        );
        assert!(image_folder(dir.path(), Split::Train, 20, MissingMasks::Keep, true).is_ok());
        std::fs::remove_file(dir.path().join("train/cat/a.mask.png")).unwrap();
        // A first line of numbers with a typo is not a header.
        for bad in [
            "0,0,1O,10\n20,5,40,20\n",
            "0,0,x,10\n",
            "x0,y0,x1\n0,0,10,10\n",
        ] {
            std::fs::write(dir.path().join("train/cat/a.boxes.csv"), bad).unwrap();
            let e = read().unwrap_err().to_string();
            assert!(e.contains("a.boxes.csv, line 1"), "{bad:?}: {e}");
        }
        std::fs::write(
            dir.path().join("train/cat/a.boxes.csv"),
            "x0, y0, x1, y1\n0,0,10,10\n",
        )
        .unwrap();
        assert!(read().is_ok());
        // An empty class directory would add a class no image has.
        std::fs::create_dir_all(dir.path().join("train/emu")).unwrap();
        let e = read().unwrap_err().to_string();
        assert!(
            e.contains("train/emu") && e.contains("empty class directory"),
            "{e}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::fuzz_cases(128),
            ..Default::default()
        })]
        /// Any text as a boxes sidecar (CSV or JSON): boxes or an error naming the file.
        #[test]
        fn any_sidecar_text_reads_cleanly(text in "\\PC{0,200}", json in proptest::prelude::any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(if json { "a.boxes.json" } else { "a.boxes.csv" });
            std::fs::write(&path, &text).unwrap();
            match read_boxes(&path) {
                Ok(boxes) => proptest::prop_assert!(boxes.iter().all(|b| b[2] > b[0] && b[3] > b[1])),
                Err(e) => proptest::prop_assert!(e.to_string().contains("a.boxes.")),
            }
        }
    }
}
