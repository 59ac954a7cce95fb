//! ImageNet (ILSVRC-2012 CLS-LOC) as it ships, with its bounding boxes.
//!
//! Two layouts under `root`:
//! - the plain one: `train/<wnid>/*.JPEG`, and `val/*.JPEG` (flat) or
//!   `val/<wnid>/*.JPEG` (sorted into classes); PASCAL VOC XML boxes beside the images
//!   (`x.xml` next to `x.JPEG`) or in `annotations/train/<wnid>/x.xml` and
//!   `annotations/val/x.xml`;
//! - Kaggle's: `Data/CLS-LOC/{train,val}` and `Annotations/CLS-LOC/{train,val}` in the
//!   same shape.
//!
//! Classes are the sorted WordNet ids of `train/`; names come from
//! `LOC_synset_mapping.txt` (`n01440764 tench, Tinca tinca`: the first synonym) when
//! present in `root` or its parent. A flat validation image takes its label from
//! `LOC_val_solution.csv` (`ImageId,PredictionString`, the string being `wnid x0 y0 x1
//! y1 …`, whose boxes are used when the image has no XML) or else from its XML's first
//! object. Boxes are in the original image's pixels, clamped to the image size the XML
//! states; a box that is empty after clamping, or not a number, is an error naming the
//! file.
use super::assemble::Annotations;
use super::catalogue::{
    class_dirs, lines, sorted_entries, subdirectories, BoxSource, Catalogue, Entry, ImageSource,
};
use super::error::{read_text, DataError};
use super::Split;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A PASCAL VOC annotation file.
#[derive(Debug, Clone, PartialEq)]
pub struct Voc {
    /// `(width, height)` from `<size>`, when stated.
    pub size: Option<(u32, u32)>,
    /// The `<name>` of the first object.
    pub first_name: Option<String>,
    /// Every object's box, clamped to `size`.
    pub boxes: Vec<[f32; 4]>,
}

/// The text between `<tag>` and `</tag>` for each occurrence (not nested).
fn elements<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The trimmed text of the first `<tag>` in `text`.
fn value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    elements(text, tag).first().map(|v| v.trim())
}

/// Reads a PASCAL VOC XML file: its size, first object name and boxes.
pub fn read_voc(path: &Path) -> Result<Voc, DataError> {
    let text = read_text(path)?;
    let number = |what: &str, v: Option<&str>, object: usize| -> Result<f32, DataError> {
        let v = v.ok_or_else(|| {
            DataError::record(path, format!("object {object}"), format!("no <{what}>"))
        })?;
        v.parse::<f32>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                DataError::record(
                    path,
                    format!("object {object}"),
                    format!("<{what}> `{v}` is not a number"),
                )
            })
    };
    let size = match value(&text, "size") {
        Some(size) => {
            let w = number("width", value(size, "width"), 0)?;
            let h = number("height", value(size, "height"), 0)?;
            (w >= 1.0 && h >= 1.0).then_some((w as u32, h as u32))
        }
        None => None,
    };
    let objects = elements(&text, "object");
    let mut boxes = Vec::with_capacity(objects.len());
    for (i, object) in objects.iter().enumerate() {
        let Some(bndbox) = value(object, "bndbox") else {
            continue;
        };
        let mut b = [0f32; 4];
        for (slot, tag) in b.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            *slot = number(tag, value(bndbox, tag), i + 1)?;
        }
        if let Some((w, h)) = size {
            b = [
                b[0].clamp(0.0, w as f32),
                b[1].clamp(0.0, h as f32),
                b[2].clamp(0.0, w as f32),
                b[3].clamp(0.0, h as f32),
            ];
        }
        if !(b[2] > b[0] && b[3] > b[1]) {
            return Err(DataError::record(
                path,
                format!("object {}", i + 1),
                format!(
                    "box {b:?} is empty{} (xmax must exceed xmin, ymax ymin)",
                    if size.is_some() {
                        " after clamping to the image"
                    } else {
                        ""
                    }
                ),
            ));
        }
        boxes.push(b);
    }
    Ok(Voc {
        size,
        first_name: objects
            .first()
            .and_then(|o| value(o, "name"))
            .map(String::from),
        boxes,
    })
}

/// Where a layout keeps its images and its XML files.
struct Layout {
    images: PathBuf,
    annotations: PathBuf,
}

fn layout(root: &Path) -> Layout {
    let kaggle = root.join("Data").join("CLS-LOC");
    if kaggle.join("train").is_dir() {
        Layout {
            images: kaggle,
            annotations: root.join("Annotations").join("CLS-LOC"),
        }
    } else {
        Layout {
            images: root.to_path_buf(),
            annotations: root.join("annotations"),
        }
    }
}

/// `name` in `root` or its parent (Kaggle keeps its CSV files beside `ILSVRC/`).
fn beside(root: &Path, name: &str) -> Option<PathBuf> {
    [Some(root), root.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| e == "jpeg" || e == "jpg" || e == "png")
}

/// The XML of `image`: beside it, or at `annotations/<relative>.xml`.
fn xml_of(image: &Path, annotations: &Path, relative: &Path) -> Option<PathBuf> {
    let beside = image.with_extension("xml");
    if beside.is_file() {
        return Some(beside);
    }
    let there = annotations.join(relative).with_extension("xml");
    there.is_file().then_some(there)
}

/// The ILSVRC `split` (train, or val as the test split) under `root`, listed.
pub fn catalogue(root: &Path, split: Split) -> Result<Catalogue, DataError> {
    let layout = layout(root);
    let train = layout.images.join("train");
    let wnids = class_dirs(&train)?;
    let labels: HashMap<&str, i64> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i as i64))
        .collect();
    let entries = match split {
        Split::Train => sorted_split(&layout, "train", &labels)?,
        Split::Test => {
            let val = layout.images.join("val");
            let sorted = sorted_entries(&val)?.iter().any(|p| p.is_dir());
            if sorted {
                sorted_split(&layout, "val", &labels)?
            } else {
                flat_val(root, &layout, &labels)?
            }
        }
    };
    Ok(Catalogue {
        format: "imagenet",
        class_names: class_names(root, &wnids)?,
        annotations: Annotations {
            boxes: entries.iter().any(|e| !matches!(e.boxes, BoxSource::None)),
            masks: false,
        },
        entries,
    })
}

/// `<split>/<wnid>/*` with labels from the directories.
fn sorted_split(
    layout: &Layout,
    split: &str,
    labels: &HashMap<&str, i64>,
) -> Result<Vec<Entry>, DataError> {
    let mut entries = Vec::new();
    let dir = layout.images.join(split);
    for class_dir in subdirectories(&dir)? {
        let wnid = class_dir.file_name().unwrap_or_default().to_string_lossy();
        let label = *labels.get(wnid.as_ref()).ok_or_else(|| {
            DataError::format(&class_dir, "this class is not among the training classes")
        })?;
        for image in sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| is_image(p))
        {
            let stem = image
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let relative = Path::new(split).join(wnid.as_ref()).join(&stem);
            let xml = xml_of(&image, &layout.annotations, &relative);
            let mut entry = Entry::keyed(entries.len(), &stem, ImageSource::File(image), label);
            entry.boxes = xml.map_or(BoxSource::None, BoxSource::Voc);
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// `val/*.JPEG`, labelled by `LOC_val_solution.csv` or by each image's XML.
fn flat_val(
    root: &Path,
    layout: &Layout,
    labels: &HashMap<&str, i64>,
) -> Result<Vec<Entry>, DataError> {
    let solution = match beside(root, "LOC_val_solution.csv") {
        Some(path) => read_solution(&path)?,
        None => HashMap::new(),
    };
    let dir = layout.images.join("val");
    let mut entries = Vec::new();
    for image in sorted_entries(&dir)?.into_iter().filter(|p| is_image(p)) {
        let stem = image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let xml = xml_of(&image, &layout.annotations, &Path::new("val").join(&stem));
        let (wnid, boxes) =
            match (solution.get(&stem), &xml) {
                (Some((wnid, boxes)), None) => (wnid.clone(), BoxSource::Inline(boxes.clone())),
                (Some((wnid, _)), Some(xml)) => (wnid.clone(), BoxSource::Voc(xml.clone())),
                (None, Some(xml)) => {
                    let voc = read_voc(xml)?;
                    let wnid = voc.first_name.ok_or_else(|| {
                        DataError::format(xml, "no <object><name> to label the image with")
                    })?;
                    (wnid, BoxSource::Voc(xml.clone()))
                }
                (None, None) => return Err(DataError::format(
                    &image,
                    "no label: neither LOC_val_solution.csv nor an XML annotation names its class",
                )),
            };
        let label = *labels.get(wnid.as_str()).ok_or_else(|| {
            DataError::format(
                &image,
                format!("its class `{wnid}` is not among the training classes"),
            )
        })?;
        let mut entry = Entry::keyed(entries.len(), &stem, ImageSource::File(image), label);
        entry.boxes = boxes;
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(DataError::format(&dir, "no validation images (.JPEG)"));
    }
    Ok(entries)
}

/// A validation image's WordNet id and boxes.
type Solution = (String, Vec<[f32; 4]>);

/// `ImageId → (wnid, boxes)` from Kaggle's `LOC_val_solution.csv`.
fn read_solution(path: &Path) -> Result<HashMap<String, Solution>, DataError> {
    let text = read_text(path)?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let record = || format!("line {}", i + 1);
        let (id, prediction) = line.split_once(',').ok_or_else(|| {
            DataError::record(path, record(), "expected `ImageId,PredictionString`")
        })?;
        let fields: Vec<&str> = prediction.split_whitespace().collect();
        if fields.is_empty() || !fields.len().is_multiple_of(5) {
            return Err(DataError::record(
                path,
                record(),
                "the prediction string must be groups of `wnid x0 y0 x1 y1`",
            ));
        }
        let mut boxes = Vec::new();
        for group in fields.chunks(5) {
            let mut b = [0f32; 4];
            for (slot, field) in b.iter_mut().zip(&group[1..]) {
                *slot = field
                    .parse()
                    .ok()
                    .filter(|v: &f32| v.is_finite())
                    .ok_or_else(|| {
                        DataError::record(path, record(), format!("`{field}` is not a number"))
                    })?;
            }
            if !(b[2] > b[0] && b[3] > b[1]) {
                return Err(DataError::record(
                    path,
                    record(),
                    format!("box {b:?} is empty"),
                ));
            }
            boxes.push(b);
        }
        out.insert(id.trim().to_string(), (fields[0].to_string(), boxes));
    }
    Ok(out)
}

/// Names from `LOC_synset_mapping.txt` when present, the WordNet ids otherwise.
fn class_names(root: &Path, wnids: &[String]) -> Result<Vec<String>, DataError> {
    let Some(path) = beside(root, "LOC_synset_mapping.txt") else {
        return Ok(wnids.to_vec());
    };
    let names: HashMap<String, String> = lines(&path)?
        .into_iter()
        .filter_map(|l| {
            let (id, rest) = l.split_once(' ')?;
            Some((id.to_string(), rest.split(',').next()?.trim().to_string()))
        })
        .collect();
    Ok(wnids
        .iter()
        .map(|w| names.get(w).cloned().unwrap_or_else(|| w.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voc(size: &str, objects: &[(&str, [&str; 4])]) -> String {
        let mut s = format!("<annotation><folder>x</folder>{size}");
        for (name, b) in objects {
            s += &format!(
                "<object><name>{name}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0], b[1], b[2], b[3]
            );
        }
        s + "</annotation>"
    }

    #[test]
    fn voc_boxes_are_read_clamped_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.xml");
        let size = "<size><width>100</width><height>50</height><depth>3</depth></size>";
        std::fs::write(
            &path,
            voc(
                size,
                &[
                    ("n01", ["10", "5", "120", "40"]),
                    ("n02", ["0", "0", "1", "1"]),
                ],
            ),
        )
        .unwrap();
        let v = read_voc(&path).unwrap();
        assert_eq!(v.size, Some((100, 50)));
        assert_eq!(v.first_name.as_deref(), Some("n01"));
        assert_eq!(
            v.boxes,
            vec![[10.0, 5.0, 100.0, 40.0], [0.0, 0.0, 1.0, 1.0]]
        );
        std::fs::write(
            &path,
            voc(
                size,
                &[
                    ("n01", ["10", "5", "120", "40"]),
                    ("n01", ["30", "5", "20", "40"]),
                ],
            ),
        )
        .unwrap();
        let e = read_voc(&path).unwrap_err().to_string();
        assert!(e.contains("a.xml, object 2: box"), "{e}");
        std::fs::write(&path, voc(size, &[("n01", ["10", "five", "20", "40"])])).unwrap();
        let e = read_voc(&path).unwrap_err().to_string();
        assert!(
            e.contains("a.xml, object 1: <ymin> `five` is not a number"),
            "{e}"
        );
        // Wholly outside the image: empty after clamping.
        std::fs::write(&path, voc(size, &[("n01", ["200", "5", "220", "40"])])).unwrap();
        assert!(read_voc(&path)
            .unwrap_err()
            .to_string()
            .contains("after clamping"));
    }
}
