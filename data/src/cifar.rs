//! CIFAR-10 and CIFAR-100 in their binary formats.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each a sequence of 3073-byte records: the label, then 1024 red,
//! 1024 green and 1024 blue bytes (row-major 32 × 32). Class names come from
//! `batches.meta.txt` when present.
//!
//! CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, 3074-byte records: the
//! coarse label, the fine label, then the pixels. Names from `fine_label_names.txt` or
//! `coarse_label_names.txt`.
use super::assemble::{assemble, Annotations, Sample};
use super::catalogue::{Catalogue, Entry, ImageSource};
use super::error::{read, read_text, DataError};
use super::{Dataset, Split};
use crate::config::Cifar100Labels;
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;

/// A split's class names and its `(label, channel-major pixels)` records.
type Records = (Vec<String>, Vec<(i64, Vec<u8>)>);

/// Reads the CIFAR-10 `split` under `root`.
pub fn cifar10(root: &Path, split: Split) -> Result<Dataset, DataError> {
    Ok(in_memory(records10(root, split)?))
}

/// Reads the CIFAR-100 `split` under `root` with `labels`.
pub fn cifar100(root: &Path, split: Split, labels: Cifar100Labels) -> Result<Dataset, DataError> {
    Ok(in_memory(records100(root, split, labels)?))
}

/// The CIFAR-10 (`labels: None`) or CIFAR-100 `split` under `root`, listed.
pub fn catalogue(
    root: &Path,
    split: Split,
    labels: Option<Cifar100Labels>,
) -> Result<Catalogue, DataError> {
    let (class_names, records) = match labels {
        None => records10(root, split)?,
        Some(labels) => records100(root, split, labels)?,
    };
    let prefix = if split == Split::Train {
        "train"
    } else {
        "test"
    };
    let entries = records
        .into_iter()
        .enumerate()
        .map(|(i, (label, rgb))| {
            Entry::keyed(i, prefix, ImageSource::Pixels { rgb, side: 32 }, label)
        })
        .collect();
    Ok(Catalogue {
        format: if labels.is_none() {
            "cifar10"
        } else {
            "cifar100"
        },
        class_names,
        entries,
        annotations: Annotations::default(),
    })
}

fn in_memory((names, records): Records) -> Dataset {
    let samples = records
        .into_iter()
        .map(|(label, pixels)| Sample {
            pixels,
            label,
            boxes: Vec::new(),
            mask: None,
        })
        .collect();
    assemble(samples, 32, names, Annotations::default())
}

fn records10(root: &Path, split: Split) -> Result<Records, DataError> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let names = class_names(&root.join("batches.meta.txt"), 10)?;
    let mut samples = Vec::new();
    for file in files {
        read_records(&root.join(file), 1, |path, index, record| {
            let label = record[0] as i64;
            if label >= 10 {
                return Err(DataError::record(
                    path,
                    format!("record {index}"),
                    format!("label {label} is not a CIFAR-10 class (0-9)"),
                ));
            }
            samples.push((label, record[1..].to_vec()));
            Ok(())
        })?;
    }
    Ok((names, samples))
}

fn records100(root: &Path, split: Split, labels: Cifar100Labels) -> Result<Records, DataError> {
    let file = root.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    });
    let (classes, names_file, offset) = match labels {
        Cifar100Labels::Coarse => (20, "coarse_label_names.txt", 0),
        Cifar100Labels::Fine => (100, "fine_label_names.txt", 1),
    };
    let names = class_names(&root.join(names_file), classes)?;
    let mut samples = Vec::new();
    read_records(&file, 2, |path, index, record| {
        let label = record[offset] as i64;
        if label >= classes as i64 {
            return Err(DataError::record(
                path,
                format!("record {index}"),
                format!(
                    "{} label {label} is out of range (0-{})",
                    if offset == 0 { "coarse" } else { "fine" },
                    classes - 1
                ),
            ));
        }
        samples.push((label, record[2..].to_vec()));
        Ok(())
    })?;
    Ok((names, samples))
}

/// Calls `each(path, index, record)` for every record of `header + 3072` bytes.
fn read_records(
    path: &Path,
    header: usize,
    mut each: impl FnMut(&Path, usize, &[u8]) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let bytes = read(path, sat_input::Kind::Records)?;
    let size = header + PIXELS;
    if bytes.is_empty() {
        return Err(DataError::format(path, "the file is empty"));
    }
    if bytes.len() % size != 0 {
        return Err(DataError::record(
            path,
            format!("record {}", bytes.len() / size),
            format!(
                "truncated: {} bytes is not a whole number of {size}-byte records ({} left over)",
                bytes.len(),
                bytes.len() % size
            ),
        ));
    }
    for (index, record) in bytes.chunks_exact(size).enumerate() {
        each(path, index, record)?;
    }
    Ok(())
}

/// Class names, one per line, from `path` if it exists; `class_<i>` otherwise.
fn class_names(path: &Path, classes: usize) -> Result<Vec<String>, DataError> {
    if !path.exists() {
        return Ok((0..classes).map(|i| format!("class_{i}")).collect());
    }
    let names: Vec<String> = read_text(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != classes {
        return Err(DataError::format(
            path,
            format!("expected {classes} class names, found {}", names.len()),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn record(header: &[u8], seed: u8) -> Vec<u8> {
        let mut r = header.to_vec();
        r.extend((0..PIXELS).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_reads_labels_and_channel_major_pixels() {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            let mut f = record(&[i as u8], i as u8);
            f.extend(record(&[9], 100));
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), f).unwrap();
        }
        std::fs::write(dir.path().join("test_batch.bin"), record(&[3], 0)).unwrap();
        let train = cifar10(dir.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 10);
        assert_eq!(
            Vec::<i64>::try_from(&train.labels).unwrap(),
            vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
        );
        assert_eq!(train.images.kind(), Kind::Uint8);
        // Pixel (channel 1, row 2, column 3) of record 0 is byte 1024 + 2·32 + 3.
        let expected = ((1024 + 67) as u8).wrapping_mul(7).wrapping_add(1);
        assert_eq!(train.images.int64_value(&[0, 1, 2, 3]), expected as i64);
        assert_eq!(train.class_names[0], "class_0");
        let test = cifar10(dir.path(), Split::Test).unwrap();
        assert_eq!(test.len(), 1);
        assert!(test.boxes.is_none() && test.masks.is_none());
    }

    #[test]
    fn cifar10_names_the_truncated_record_and_bad_labels() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = record(&[1], 0);
        f.extend(&record(&[2], 0)[..100]);
        std::fs::write(dir.path().join("test_batch.bin"), f).unwrap();
        let e = cifar10(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("test_batch.bin, record 1: truncated"), "{e}");
        std::fs::write(dir.path().join("test_batch.bin"), record(&[12], 0)).unwrap();
        let e = cifar10(dir.path(), Split::Test).unwrap_err().to_string();
        assert!(e.contains("record 0: label 12"), "{e}");
        let e = cifar10(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }

    #[test]
    fn cifar100_picks_fine_or_coarse_labels_and_reads_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = record(&[4, 77], 0);
        f.extend(record(&[19, 99], 1));
        std::fs::write(dir.path().join("train.bin"), f).unwrap();
        let names: String = (0..20).map(|i| format!("super{i}\n")).collect();
        std::fs::write(dir.path().join("coarse_label_names.txt"), names).unwrap();
        let fine = cifar100(dir.path(), Split::Train, Cifar100Labels::Fine).unwrap();
        assert_eq!(Vec::<i64>::try_from(&fine.labels).unwrap(), vec![77, 99]);
        assert_eq!(fine.num_classes(), 100);
        let coarse = cifar100(dir.path(), Split::Train, Cifar100Labels::Coarse).unwrap();
        assert_eq!(Vec::<i64>::try_from(&coarse.labels).unwrap(), vec![4, 19]);
        assert_eq!(coarse.class_names[19], "super19");
        std::fs::write(dir.path().join("fine_label_names.txt"), "only\ntwo\n").unwrap();
        let e = cifar100(dir.path(), Split::Train, Cifar100Labels::Fine)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fine_label_names.txt: expected 100 class names, found 2"),
            "{e}"
        );
        std::fs::write(dir.path().join("test.bin"), record(&[20, 5], 0)).unwrap();
        let e = cifar100(dir.path(), Split::Test, Cifar100Labels::Coarse)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.bin, record 0: coarse label 20"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::fuzz_cases(64),
            ..Default::default()
        })]
        /// Any bytes as a CIFAR file: a dataset or an error naming the file, never a panic.
        #[test]
        fn any_bytes_read_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..7000)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("test_batch.bin"), &bytes).unwrap();
            std::fs::write(dir.path().join("test.bin"), &bytes).unwrap();
            match cifar10(dir.path(), Split::Test) {
                Ok(d) => proptest::prop_assert_eq!(d.len() as usize, bytes.len() / 3073),
                Err(e) => proptest::prop_assert!(e.to_string().contains("test_batch.bin")),
            }
            if let Err(e) = cifar100(dir.path(), Split::Test, Cifar100Labels::Fine) {
                proptest::prop_assert!(e.to_string().contains("test.bin"));
            }
        }
    }
}
