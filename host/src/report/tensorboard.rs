//! TensorBoard event files: the run's per-epoch training figures and its evaluation as
//! scalars, readable by `tensorboard --logdir runs` (each run directory is one run).
//!
//! Written by the format's specification, without TensorFlow: a file is a sequence of
//! TFRecords (`u64` length, masked CRC32C of the length, the data, masked CRC32C of the
//! data; little-endian), each holding one `Event` protobuf. The first event carries
//! `file_version = "brain.Event:2"`; every process start opens a new file and marks where
//! it starts with a `SessionLog` `START` event, so TensorBoard drops any figures an
//! earlier process recorded at or after that step (an epoch a crash made `--resume`
//! redo) and the curves never run backwards.
use super::{EpochMetrics, Metrics};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The prefix of every event file's name (what TensorBoard looks for).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// The `file_version` of the first event of a file.
const FILE_VERSION: &str = "brain.Event:2";

/// The CRC32C (Castagnoli) lookup table, reflected polynomial `0x82F63B78`.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The CRC32C (Castagnoli) checksum of `data`, as TFRecord uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TFRecord's masked CRC32C: the checksum rotated right by 15 bits plus `0xa282ead8`.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord.
pub fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Appends `value` as a protobuf varint.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the key of protobuf field `field` with wire type `wire`.
fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// Appends a length-delimited field (a string, bytes or an embedded message).
fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What an event carries besides its time and step.
enum Payload<'a> {
    /// `file_version` (field 3).
    FileVersion,
    /// `session_log` (field 6) with status `START`.
    SessionStart,
    /// `summary` (field 5): `(tag, simple_value)` pairs.
    Scalars(&'a [(String, f32)]),
}

/// The protobuf bytes of an `Event` at `wall_time` (seconds since the Unix epoch) and
/// `step`.
fn event(wall_time: f64, step: i64, payload: Payload<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut out, 2, 0);
    // int64: a negative step is its two's complement, as protobuf encodes it.
    varint(&mut out, step as u64);
    match payload {
        Payload::FileVersion => bytes_field(&mut out, 3, FILE_VERSION.as_bytes()),
        Payload::SessionStart => {
            // SessionLog { status = 1: START (1) }.
            bytes_field(&mut out, 6, &[0x08, 0x01]);
        }
        Payload::Scalars(values) => {
            let mut summary = Vec::new();
            for (tag, value) in values {
                // Summary.Value { tag = 1, simple_value = 2 (float) }.
                let mut v = Vec::new();
                bytes_field(&mut v, 1, tag.as_bytes());
                key(&mut v, 2, 5);
                v.extend_from_slice(&value.to_le_bytes());
                bytes_field(&mut summary, 1, &v);
            }
            bytes_field(&mut out, 5, &summary);
        }
    }
    out
}

/// The protobuf bytes of an `Event` holding one summary of scalars (`simple_value`s).
pub fn scalars_event(wall_time: f64, step: i64, values: &[(String, f32)]) -> Vec<u8> {
    event(wall_time, step, Payload::Scalars(values))
}

/// Seconds since the Unix epoch, as event files record time.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name for event file names (letters, digits, `-`, `_`, `.`; `localhost`
/// when unknown).
fn host_name() -> String {
    // The kernel's name for the machine (what gethostname returns), read without unsafe
    // code: `unsafe` is kept to the tensor boundary.
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .take(255)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The seconds in the names of the event files already in `dir` (TensorBoard reads a
/// directory's files in name order, so a new file must sort after them).
fn latest_file_seconds(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(FILE_PREFIX)?;
            rest.split('.').next()?.parse::<u64>().ok()
        })
        .max()
}

/// One process's event file, open for appending records.
#[derive(Debug)]
pub struct EventFile {
    path: PathBuf,
    file: File,
}

impl EventFile {
    /// Creates a new event file in `dir`,
    /// `events.out.tfevents.<seconds>.<host>.<pid>.<n>` (the seconds after those of any
    /// event file already there, so that TensorBoard reads the files in the order they
    /// were written), and writes its `file_version` event. Nothing existing is opened or
    /// followed (`O_EXCL`, `O_NOFOLLOW`).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let wall = now();
        let seconds = (wall as u64).max(latest_file_seconds(dir).map_or(0, |s| s + 1));
        let stem = format!(
            "{FILE_PREFIX}{seconds}.{}.{}",
            host_name(),
            std::process::id()
        );
        let mut last = None;
        for n in 0..64 {
            let path = dir.join(format!("{stem}.{n}"));
            match super::create_new(&path) {
                Ok(file) => {
                    let mut events = Self { path, file };
                    events.append(&event(wall, 0, Payload::FileVersion))?;
                    return Ok(events);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("64 attempts"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one scalar summary at `step` and syncs the file.
    pub fn scalars(&mut self, step: i64, values: &[(String, f32)]) -> std::io::Result<()> {
        self.append(&scalars_event(now(), step, values))
    }

    /// Appends a `SessionLog START` event at `step`: TensorBoard discards what earlier
    /// files of the directory recorded at `step` or later.
    pub fn session_start(&mut self, step: i64) -> std::io::Result<()> {
        self.append(&event(now(), step, Payload::SessionStart))
    }

    /// Appends `event` as one record, then syncs the file, so that nothing written is
    /// lost to a crash or a kill.
    fn append(&mut self, event: &[u8]) -> std::io::Result<()> {
        self.file.write_all(&record(event))?;
        self.file.sync_data()
    }
}

/// The tags of [`TensorBoard::epoch`] under which each epoch's figures are written.
pub mod tags {
    /// Mean training loss.
    pub const TRAIN_LOSS: &str = "train/loss";
    /// Training accuracy (on the training inputs, perturbed when the run trains on attacks).
    pub const TRAIN_ACCURACY: &str = "train/accuracy";
    /// The learning rate of the epoch's first step.
    pub const LEARNING_RATE: &str = "train/learning_rate";
    /// Training throughput, images per second.
    pub const IMAGES_PER_SEC: &str = "train/images_per_sec";
    /// The share of the epoch the step waited for data.
    pub const DATA_WAIT_SHARE: &str = "train/data_wait_share";
    /// Clean test accuracy.
    pub const CLEAN_ACCURACY: &str = "eval/clean_accuracy";
    /// Mean Etmann alignment.
    pub const ALIGNMENT: &str = "eval/alignment";
    /// The prefix of the robust accuracies, followed by `<attack> <norm> <ε>`.
    pub const ROBUST_ACCURACY: &str = "eval/robust_accuracy/";
}

/// A training run's TensorBoard log: one [`EventFile`] for this process, in the run
/// directory (rank 0 alone writes one).
#[derive(Debug)]
pub struct TensorBoard {
    events: EventFile,
}

impl TensorBoard {
    /// Opens a new event file in the run directory `dir` for a process that trains from
    /// epoch `first_epoch` (1-based) on; figures earlier processes recorded from that
    /// epoch on are superseded.
    pub fn open(dir: &Path, first_epoch: u32) -> std::io::Result<Self> {
        let mut events = EventFile::create(dir)?;
        events.session_start(i64::from(first_epoch))?;
        Ok(Self { events })
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        self.events.path()
    }

    /// Writes an epoch's figures at step `epoch` (1-based) with the learning rate
    /// `lr`, and syncs the file.
    pub fn epoch(&mut self, e: &EpochMetrics, lr: f64) -> std::io::Result<()> {
        self.events
            .scalars(i64::from(e.epoch), &epoch_scalars(e, lr))
    }

    /// Writes the evaluation's figures at step `epoch` (the epochs trained), and syncs
    /// the file.
    pub fn evaluation(&mut self, epoch: u32, m: &Metrics) -> std::io::Result<()> {
        let values = evaluation_scalars(m);
        if values.is_empty() {
            return Ok(());
        }
        self.events.scalars(i64::from(epoch), &values)
    }
}

/// The scalars of one epoch: loss, accuracy, learning rate, throughput and, when
/// recorded, the data-wait share.
pub fn epoch_scalars(e: &EpochMetrics, lr: f64) -> Vec<(String, f32)> {
    let mut values = vec![
        (tags::TRAIN_LOSS.to_string(), e.train_loss as f32),
        (tags::TRAIN_ACCURACY.to_string(), e.train_accuracy as f32),
        (tags::LEARNING_RATE.to_string(), lr as f32),
        (tags::IMAGES_PER_SEC.to_string(), e.images_per_sec as f32),
    ];
    if let Some(wait) = e.data_wait_share {
        values.push((tags::DATA_WAIT_SHARE.to_string(), wait as f32));
    }
    values
}

/// The scalars of an evaluation: clean accuracy, robust accuracy per attack, norm and
/// budget (`eval/robust_accuracy/pgd linf 8/255`; an ℓ2 budget as a plain number), and
/// the alignment, each where recorded.
pub fn evaluation_scalars(m: &Metrics) -> Vec<(String, f32)> {
    let mut values = Vec::new();
    if let Some(clean) = m.clean_accuracy {
        values.push((tags::CLEAN_ACCURACY.to_string(), clean as f32));
    }
    for r in &m.robust_accuracy {
        values.push((robust_tag(&r.attack, &r.norm, r.epsilon), r.accuracy as f32));
    }
    if let Some(alignment) = m.alignment {
        values.push((tags::ALIGNMENT.to_string(), alignment as f32));
    }
    values
}

/// `eval/robust_accuracy/<attack> <norm> <ε>`, ε as people write it for the norm.
pub fn robust_tag(attack: &str, norm: &str, epsilon: f64) -> String {
    format!(
        "{}{attack} {norm} {}",
        tags::ROBUST_ACCURACY,
        super::plot::budget(epsilon, norm)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_rotate)] // the mask spelled out as TensorFlow writes it
    fn crc32c_matches_the_known_vectors() {
        // The check value of CRC-32C, and RFC 3720's (iSCSI) test patterns.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        // The mask: rotate right by 15, add 0xa282ead8.
        let crc = crc32c(b"123456789");
        assert_eq!(
            masked_crc32c(b"123456789"),
            ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
        );
    }

    #[test]
    #[allow(clippy::manual_rotate)] // the mask spelled out as TensorFlow writes it
    fn a_record_is_length_checksum_data_checksum() {
        let data = b"abc";
        let r = record(data);
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], data);
        assert_eq!(&r[15..], &masked_crc32c(data).to_le_bytes());
        // The length's masked checksum, worked out independently of `record`.
        let crc = crc32c(&[3, 0, 0, 0, 0, 0, 0, 0]);
        let masked = ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8);
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()), masked);
        // An empty record still has both checksums.
        assert_eq!(record(b"").len(), 16);
    }

    #[test]
    fn an_event_has_the_protobuf_bytes_of_the_spec() {
        let bytes = scalars_event(1.5, 300, &[("a".to_string(), 0.5)]);
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        // step = 300: key 0x10, varint 0xac 0x02.
        expected.extend_from_slice(&[0x10, 0xac, 0x02]);
        // summary (field 5): Value (field 1) { tag (1) "a", simple_value (2, fixed32) 0.5 }.
        expected.extend_from_slice(&[0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x15]);
        expected.extend_from_slice(&0.5f32.to_le_bytes());
        assert_eq!(bytes, expected);
        let first = event(2.0, 0, Payload::FileVersion);
        let mut expected = vec![0x09];
        expected.extend_from_slice(&2.0f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 0x00, 0x1a, 13]);
        expected.extend_from_slice(b"brain.Event:2");
        assert_eq!(first, expected);
        let start = event(2.0, 3, Payload::SessionStart);
        assert_eq!(&start[9..], &[0x10, 0x03, 0x32, 0x02, 0x08, 0x01]);
    }

    #[test]
    fn long_tags_and_many_values_use_multi_byte_lengths() {
        let tag = "t".repeat(200);
        let values: Vec<(String, f32)> = (0..20).map(|i| (tag.clone(), i as f32)).collect();
        let bytes = scalars_event(0.0, 1, &values);
        // Each Value: 1 + 2 (length 200) + 200 + 5 = 208 bytes, framed as 1 + 2 + 208.
        let summary_len = 20 * (1 + 2 + 208);
        assert_eq!(summary_len, 4220);
        assert_eq!(bytes.len(), 9 + 2 + 1 + 2 + summary_len);
        // 4220 = 0x107c: varint 0xfc 0x20.
        assert_eq!(&bytes[11..15], &[0x2a, 0xfc, 0x20, 0x0a]);
    }

    /// The records of an event file, each checked against its checksums.
    fn read_records(path: &Path) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(path).unwrap();
        let mut at = 0;
        let mut records = Vec::new();
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc32c(data));
            records.push(data.to_vec());
            at += 16 + len;
        }
        records
    }

    #[test]
    fn each_process_start_gets_a_new_file_that_sorts_last() {
        let dir = tempfile::tempdir().unwrap();
        // A file from the future: the next one must still sort after it.
        let later = format!("{FILE_PREFIX}{}.h.1.0", now() as u64 + 100);
        std::fs::write(dir.path().join(&later), b"").unwrap();
        let mut a = TensorBoard::open(dir.path(), 1).unwrap();
        let e = EpochMetrics {
            epoch: 1,
            train_loss: 2.0,
            train_accuracy: 0.25,
            images_per_sec: 100.0,
            seconds: 1.0,
            rss_mib: 0.0,
            data_digest: None,
            allreduce_seconds: None,
            data_wait_share: Some(0.125),
            skipped_samples: None,
        };
        a.epoch(&e, 0.01).unwrap();
        let b = TensorBoard::open(dir.path(), 2).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let name = |t: &TensorBoard| t.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(names, vec![later, name(&a), name(&b)]);
        assert!(name(&a).ends_with(&format!(".{}.0", std::process::id())));
        // File version, session start at epoch 1, the epoch's scalars; synced as written.
        let records = read_records(a.path());
        assert_eq!(records.len(), 3);
        assert!(records[0].ends_with(b"brain.Event:2"));
        assert!(records[1].ends_with(&[0x10, 0x01, 0x32, 0x02, 0x08, 0x01]));
        assert_eq!(&records[2][9..11], &[0x10, 0x01]);
        for tag in ["train/loss", "train/learning_rate", "train/data_wait_share"] {
            assert!(
                records[2].windows(tag.len()).any(|w| w == tag.as_bytes()),
                "{tag}"
            );
        }
        assert_eq!(read_records(b.path()).len(), 2);
    }

    #[test]
    fn evaluation_tags_name_attack_norm_and_budget() {
        let m = Metrics {
            clean_accuracy: Some(0.9),
            robust_accuracy: vec![
                super::super::RobustAccuracy {
                    attack: "pgd".into(),
                    norm: "linf".into(),
                    epsilon: 8.0 / 255.0,
                    accuracy: 0.4,
                    ..Default::default()
                },
                super::super::RobustAccuracy {
                    attack: "pgd-l2".into(),
                    norm: "l2".into(),
                    epsilon: 0.5,
                    accuracy: 0.3,
                    ..Default::default()
                },
            ],
            alignment: None,
            ..Metrics::default()
        };
        let tags: Vec<String> = evaluation_scalars(&m).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            tags,
            [
                "eval/clean_accuracy",
                "eval/robust_accuracy/pgd linf 8/255",
                "eval/robust_accuracy/pgd-l2 l2 0.5"
            ]
        );
        assert!(evaluation_scalars(&Metrics::default()).is_empty());
    }
}
