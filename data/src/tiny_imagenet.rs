//! Tiny ImageNet (`tiny-imagenet-200/`): `wnids.txt` (one WordNet id per line; the label
//! is the id's index in sorted order), `words.txt` (optional names), training images in
//! `train/<wnid>/images/*.JPEG` with boxes in `train/<wnid>/<wnid>_boxes.txt` (`file x0 y0
//! x1 y1`, tab-separated), and the labelled validation set, used as the test split, in
//! `val/images/` with `val/val_annotations.txt` (`file wnid x0 y0 x1 y1`).
//!
//! Box corners are inclusive pixel indices in the file; here they become half-open
//! (`x1 + 1`) and are scaled with the image when `image_size` is not 64.
use super::assemble::Annotations;
use super::catalogue::{lines, BoxSource, Catalogue, Entry, ImageSource};
use super::error::{read_text, DataError};
use super::{Dataset, Split};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Reads the Tiny ImageNet `split` under `root` at side `size`.
pub fn tiny_imagenet(root: &Path, split: Split, size: i64) -> Result<Dataset, DataError> {
    catalogue(root, split)?.decode(size, false)
}

/// The Tiny ImageNet `split` under `root`, listed.
pub fn catalogue(root: &Path, split: Split) -> Result<Catalogue, DataError> {
    let wnids_path = root.join("wnids.txt");
    let mut wnids = lines(&wnids_path)?;
    if wnids.is_empty() {
        return Err(DataError::format(&wnids_path, "no WordNet ids"));
    }
    wnids.sort();
    let index: HashMap<&str, i64> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i64))
        .collect();
    let mut entries = Vec::new();
    let mut push = |image: std::path::PathBuf, label: i64, bbox: [f32; 4]| {
        let name = image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut entry = Entry::keyed(entries.len(), &name, ImageSource::File(image), label);
        entry.boxes = BoxSource::Inline(vec![bbox]);
        entries.push(entry);
    };
    match split {
        Split::Train => {
            for (label, wnid) in wnids.iter().enumerate() {
                let dir = root.join("train").join(wnid);
                let boxes = dir.join(format!("{wnid}_boxes.txt"));
                for (line, fields) in table(&boxes, 5)? {
                    push(
                        dir.join("images").join(&fields[0]),
                        label as i64,
                        corners(&boxes, line, &fields[1..])?,
                    );
                }
            }
        }
        Split::Test => {
            let annotations = root.join("val").join("val_annotations.txt");
            for (line, fields) in table(&annotations, 6)? {
                let label = *index.get(fields[1].as_str()).ok_or_else(|| {
                    DataError::record(
                        &annotations,
                        format!("line {line}"),
                        format!("WordNet id `{}` is not in wnids.txt", fields[1]),
                    )
                })?;
                push(
                    root.join("val").join("images").join(&fields[0]),
                    label,
                    corners(&annotations, line, &fields[2..])?,
                );
            }
        }
    }
    Ok(Catalogue {
        format: "tiny-imagenet",
        class_names: class_names(root, &wnids)?,
        entries,
        annotations: Annotations {
            boxes: true,
            masks: false,
        },
    })
}

/// The lines of a tab-separated file with at least `fields` fields, numbered from 1.
fn table(path: &Path, fields: usize) -> Result<Vec<(usize, Vec<String>)>, DataError> {
    let text = read_text(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Vec<String> = line.split_whitespace().map(String::from).collect();
        if row.len() < fields {
            return Err(DataError::record(
                path,
                format!("line {}", i + 1),
                format!("expected {fields} fields, found {}", row.len()),
            ));
        }
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// Inclusive `x0 y0 x1 y1` to a half-open box.
fn corners(path: &Path, line: usize, fields: &[String]) -> Result<[f32; 4], DataError> {
    let mut v = [0f32; 4];
    for (slot, field) in v.iter_mut().zip(fields) {
        *slot = field.parse().map_err(|_| {
            DataError::record(
                path,
                format!("line {line}"),
                format!("box coordinate `{field}` is not a number"),
            )
        })?;
    }
    if v[2] < v[0] || v[3] < v[1] {
        return Err(DataError::record(
            path,
            format!("line {line}"),
            format!("box {v:?} has its corners the wrong way round"),
        ));
    }
    Ok([v[0], v[1], v[2] + 1.0, v[3] + 1.0])
}

/// Names from `words.txt` (first synonym) when present, the WordNet ids otherwise.
fn class_names(root: &Path, wnids: &[String]) -> Result<Vec<String>, DataError> {
    let words = root.join("words.txt");
    if !words.exists() {
        return Ok(wnids.to_vec());
    }
    let text = read_text(&words)?;
    let map: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (id.trim(), name.split(',').next().unwrap_or(name).trim()))
        .collect();
    Ok(wnids
        .iter()
        .map(|w| {
            map.get(w.as_str())
                .map_or_else(|| w.clone(), |n| n.to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn write_jpeg(path: &Path, colour: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(64, 64, Rgb(colour))
            .save(path)
            .unwrap();
    }

    fn layout(root: &Path) {
        std::fs::write(root.join("wnids.txt"), "n02\nn01\n").unwrap();
        std::fs::write(
            root.join("words.txt"),
            "n01\tgoldfish, Carassius auratus\nn02\tdog\n",
        )
        .unwrap();
        for (wnid, colour) in [("n01", [200, 10, 10]), ("n02", [10, 10, 200])] {
            let dir = root.join("train").join(wnid);
            write_jpeg(&dir.join("images").join(format!("{wnid}_0.JPEG")), colour);
            write_jpeg(&dir.join("images").join(format!("{wnid}_1.JPEG")), colour);
            std::fs::write(
                dir.join(format!("{wnid}_boxes.txt")),
                format!("{wnid}_0.JPEG\t0\t0\t63\t63\n{wnid}_1.JPEG\t4\t8\t19\t39\n"),
            )
            .unwrap();
        }
        write_jpeg(&root.join("val/images/val_0.JPEG"), [10, 10, 200]);
        std::fs::write(
            root.join("val/val_annotations.txt"),
            "val_0.JPEG\tn02\t10\t20\t29\t59\n",
        )
        .unwrap();
    }

    #[test]
    fn reads_sorted_labels_boxes_and_names_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let train = tiny_imagenet(dir.path(), Split::Train, 64).unwrap();
        assert_eq!(train.len(), 4);
        assert_eq!(
            Vec::<i64>::try_from(&train.labels).unwrap(),
            vec![0, 0, 1, 1]
        );
        assert_eq!(train.class_names, vec!["goldfish", "dog"]);
        // n01 is red: its mean red channel is far above its blue one.
        let red = train.images.int64_value(&[0, 0, 30, 30]);
        let blue = train.images.int64_value(&[0, 2, 30, 30]);
        assert!(red > 150 && blue < 60, "{red} {blue}");
        let boxes = train.boxes.as_ref().unwrap();
        assert_eq!(
            Vec::<f32>::try_from(boxes.get(1).get(0)).unwrap(),
            vec![4.0, 8.0, 20.0, 40.0]
        );
        let test = tiny_imagenet(dir.path(), Split::Test, 32).unwrap();
        assert_eq!(Vec::<i64>::try_from(&test.labels).unwrap(), vec![1]);
        assert_eq!(test.images.size(), vec![1, 3, 32, 32]);
        let b = test.boxes.as_ref().unwrap().get(0).get(0);
        assert_eq!(
            Vec::<f32>::try_from(b).unwrap(),
            vec![5.0, 10.0, 15.0, 30.0]
        );
    }

    #[test]
    fn bad_lines_and_missing_or_corrupt_images_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        let ann = dir.path().join("val/val_annotations.txt");
        std::fs::write(&ann, "val_0.JPEG\tn09\t1\t1\t2\t2\n").unwrap();
        let e = tiny_imagenet(dir.path(), Split::Test, 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("val_annotations.txt, line 1: WordNet id `n09`"),
            "{e}"
        );
        std::fs::write(&ann, "val_0.JPEG\tn02\t1\tx\t2\t2\n").unwrap();
        let e = tiny_imagenet(dir.path(), Split::Test, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: box coordinate `x`"), "{e}");
        std::fs::write(&ann, "val_0.JPEG\tn02\n").unwrap();
        let e = tiny_imagenet(dir.path(), Split::Test, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: expected 6 fields, found 2"), "{e}");
        let image = dir.path().join("train/n01/images/n01_1.JPEG");
        let bytes = std::fs::read(&image).unwrap();
        std::fs::write(&image, &bytes[..bytes.len() / 3]).unwrap();
        let e = tiny_imagenet(dir.path(), Split::Train, 64)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n01_1.JPEG") && e.contains("cannot decode"),
            "{e}"
        );
        std::fs::remove_file(&image).unwrap();
        let e = tiny_imagenet(dir.path(), Split::Train, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n01_1.JPEG"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::fuzz_cases(64),
            ..Default::default()
        })]
        /// Any annotation text: a dataset or an error naming a file, never a panic.
        #[test]
        fn any_annotation_text_reads_cleanly(text in "(val_0\\.JPEG|n0[12]|[0-9x.-]{1,4}|\t| |\n){0,40}") {
            let dir = tempfile::tempdir().unwrap();
            layout(dir.path());
            std::fs::write(dir.path().join("val/val_annotations.txt"), &text).unwrap();
            match tiny_imagenet(dir.path(), Split::Test, 16) {
                Ok(d) => proptest::prop_assert!(d.len() >= 0),
                Err(e) => proptest::prop_assert!(e.to_string().contains(".txt") || e.to_string().contains(".JPEG")),
            }
        }
    }
}
