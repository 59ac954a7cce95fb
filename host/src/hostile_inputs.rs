//! A property over generated hostile inputs (issue 22): every file sat reads, as any kind
//! of file (regular of random or mutated bytes, empty, larger than its cap, FIFO,
//! directory, device, dangling or looping link), and every ranged number at and beyond
//! its range, either works or fails with an error naming the file or the key, within a
//! time bound; never a panic, an abort or a hang.
use crate::config::{self, validate, Override};
use crate::report::Metrics;
use crate::train::checkpoint;
use crate::train::optimizer::{LossScale, Optimizer, Rule};
use proptest::prelude::*;
use sat_data::config::MissingMasks;
use sat_data::Split;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use tch::{nn, Device};

/// What a generated file is.
#[derive(Debug, Clone)]
enum FileKind {
    /// Random bytes.
    Random(Vec<u8>),
    /// A valid file of the target with bytes changed at `(offset, byte)` and cut at `len`.
    Mutated(Vec<(usize, u8)>, usize),
    Empty,
    /// A sparse file one byte over the kind's cap.
    OverCap,
    Fifo,
    Directory,
    Device(&'static str),
    Dangling,
    SelfLoop,
}

/// Which reader reads it.
#[derive(Debug, Clone, Copy)]
enum Target {
    Config,
    Image,
    Mask,
    Sidecar,
    Checkpoint,
    State,
    Metrics,
    Model,
    Manifest,
}

fn file_kind() -> impl Strategy<Value = FileKind> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048).prop_map(FileKind::Random),
        (
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            any::<usize>()
        )
            .prop_map(|(flips, len)| FileKind::Mutated(flips, len)),
        Just(FileKind::Empty),
        Just(FileKind::OverCap),
        Just(FileKind::Fifo),
        Just(FileKind::Directory),
        Just(FileKind::Device("/dev/zero")),
        Just(FileKind::Device("/dev/null")),
        Just(FileKind::Dangling),
        Just(FileKind::SelfLoop),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    use Target::*;
    prop_oneof![
        Just(Config),
        Just(Image),
        Just(Mask),
        Just(Sidecar),
        Just(Checkpoint),
        Just(State),
        Just(Metrics),
        Just(Model),
        Just(Manifest),
    ]
}

/// A small model with its variables and a trainer state, as a run would have.
fn small_model() -> (nn::VarStore, Optimizer) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = sat_models::small_cnn(&vs.root(), 2, 3);
    let rule = Rule::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut optimizer = Optimizer::new(&vs, rule);
    optimizer.ensure_buffers(1);
    (vs, optimizer)
}

/// Writes the valid files every target starts from into `dir` and returns the path of
/// the one `target` reads.
fn valid_files(dir: &Path, target: Target) -> PathBuf {
    let folder = dir.join("folder");
    for class in ["a", "b"] {
        let d = folder.join("train").join(class);
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_pixel(12, 10, image::Rgb([200, 10, 10]))
            .save(d.join("x.png"))
            .unwrap();
        image::GrayImage::from_pixel(12, 10, image::Luma([255]))
            .save(d.join("x.mask.png"))
            .unwrap();
        std::fs::write(d.join("x.boxes.csv"), "1,1,5,5\n").unwrap();
    }
    std::fs::write(
        dir.join("c.toml"),
        "name = \"x\"\n[train]\nepochs = 2\nlr = 0.1\n",
    )
    .unwrap();
    let (vs, optimizer) = small_model();
    checkpoint::save_checkpoint(&vs, &dir.join("checkpoint.safetensors")).unwrap();
    checkpoint::save_state(
        &vs,
        &optimizer,
        &LossScale::default(),
        1,
        // A mid-epoch state: its fields are mutated too.
        Some(&checkpoint::WithinEpoch {
            batches: 3,
            loss: 2.5,
            correct: 4,
            seen: 8,
            seconds: 1.0,
            of: 10,
        }),
        &dir.join("state.safetensors"),
    )
    .unwrap();
    let metrics = Metrics {
        clean_accuracy: Some(0.5),
        ..Metrics::default()
    };
    std::fs::write(
        dir.join("metrics.json"),
        serde_json::to_vec(&metrics).unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    std::fs::write(dir.join("shards/manifest.json"), "{}").unwrap();
    std::fs::write(dir.join("model.pt"), "not a model").unwrap();
    match target {
        Target::Config => dir.join("c.toml"),
        Target::Image => folder.join("train/a/x.png"),
        Target::Mask => folder.join("train/a/x.mask.png"),
        Target::Sidecar => folder.join("train/a/x.boxes.csv"),
        Target::Checkpoint => dir.join("checkpoint.safetensors"),
        Target::State => dir.join("state.safetensors"),
        Target::Metrics => dir.join("metrics.json"),
        Target::Model => dir.join("model.pt"),
        Target::Manifest => dir.join("shards/manifest.json"),
    }
}

/// The most bytes of a file of `target` that sat reads.
fn cap(target: Target) -> u64 {
    use sat_input::Kind;
    match target {
        Target::Config => Kind::Config.cap(),
        Target::Image | Target::Mask => Kind::Image.cap(),
        Target::Sidecar => Kind::Annotation.cap(),
        Target::Checkpoint | Target::State => Kind::Tensors.cap(),
        Target::Metrics => Kind::Report.cap(),
        Target::Model => Kind::Model.cap(),
        Target::Manifest => Kind::Index.cap(),
    }
}

/// Replaces the file at `path` by one of `kind`.
fn make(path: &Path, kind: &FileKind, target: Target) {
    let valid = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    match kind {
        FileKind::Random(bytes) => std::fs::write(path, bytes).unwrap(),
        FileKind::Mutated(flips, len) => {
            let mut bytes = valid;
            for &(at, byte) in flips {
                let n = bytes.len().max(1);
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = byte;
                }
            }
            bytes.truncate(len % (bytes.len() + 1));
            std::fs::write(path, bytes).unwrap();
        }
        FileKind::Empty => std::fs::write(path, b"").unwrap(),
        FileKind::OverCap => {
            let f = std::fs::File::create(path).unwrap();
            f.set_len(cap(target) + 1).unwrap();
        }
        FileKind::Fifo => {
            let made = std::process::Command::new("mkfifo").arg(path).status();
            assert!(made.unwrap().success());
        }
        FileKind::Directory => std::fs::create_dir(path).unwrap(),
        FileKind::Device(device) => std::os::unix::fs::symlink(device, path).unwrap(),
        FileKind::Dangling => {
            std::os::unix::fs::symlink(path.with_extension("gone"), path).unwrap()
        }
        FileKind::SelfLoop => std::os::unix::fs::symlink(path, path).unwrap(),
    }
}

/// Reads the file at `path` as sat does for `target`, from the files of `dir`.
fn read(dir: &Path, target: Target, path: &Path) -> Result<(), String> {
    let shown = |e: &dyn std::fmt::Display| format!("{e:#}");
    match target {
        Target::Config => config::load(Some(path), &[])
            .map(drop)
            .map_err(|e| shown(&e)),
        Target::Image | Target::Mask | Target::Sidecar => {
            let folder = dir.join("folder");
            sat_data::image_folder::image_folder(
                &folder,
                Split::Train,
                16,
                MissingMasks::Keep,
                false,
            )
            .map(drop)
            .map_err(|e| shown(&e))
        }
        Target::Checkpoint => {
            let (mut vs, _) = small_model();
            checkpoint::load_weights(&mut vs, path).map_err(|e| shown(&e))
        }
        Target::State => {
            let (mut vs, mut optimizer) = small_model();
            let mut scale = LossScale::default();
            checkpoint::load_state(&mut vs, &mut optimizer, &mut scale, path)
                .map(drop)
                .map_err(|e| shown(&e))
        }
        Target::Metrics => Metrics::read(path).map(drop).map_err(|e| shown(&e)),
        Target::Model => sat_models::TorchScriptModel::load(path, Device::Cpu)
            .map(drop)
            .map_err(|e| shown(&e)),
        Target::Manifest => sat_data::shards::ShardSet::open(&dir.join("shards"), Split::Train)
            .map(drop)
            .map_err(|e| shown(&e)),
    }
}

/// Runs `f` on a thread of its own: `Err` if it panics or runs past `seconds`.
fn bounded<T: Send + 'static>(
    seconds: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (send, receive) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = send.send(f());
    });
    match receive.recv_timeout(Duration::from_secs(seconds)) {
        Ok(value) => {
            let _ = worker.join();
            Ok(value)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("it panicked".into()),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("it ran past {seconds} s")),
    }
}

/// A ranged key of the host's config, its valid bounds (as TOML text) and values beyond.
fn number_cases() -> Vec<(&'static str, Vec<String>, Vec<String>)> {
    let int = |lo: i128, hi: i128| {
        let beyond = [lo - 1, hi + 1, i64::MAX as i128, -1]
            .into_iter()
            .filter(|v| *v < lo || *v > hi)
            .map(|v| v.to_string())
            .collect();
        (vec![lo.to_string(), hi.to_string()], beyond)
    };
    let r =
        |range: &std::ops::RangeInclusive<usize>| int(*range.start() as i128, *range.end() as i128);
    let mut cases = Vec::new();
    let mut add = |key, (at, beyond): (Vec<String>, Vec<String>)| cases.push((key, at, beyond));
    add("train.epochs", int(1, validate::MAX_EPOCHS as i128));
    add("train.batch_size", r(&validate::BATCH_SIZE));
    add("eval.batch_size", r(&validate::BATCH_SIZE));
    add("eval.max_samples", r(&validate::EVAL_SAMPLES));
    add("data.train_size", r(&validate::SUBSET_SIZE));
    add("data.workers", r(&validate::WORKERS));
    add("data.prefetch", r(&validate::PREFETCH));
    add("data.shuffle_block", r(&validate::SHUFFLE_BLOCK));
    let w = &validate::WIDTH;
    add("model.width", int(*w.start() as i128, *w.end() as i128));
    let t = &validate::TIMEOUT_SECONDS;
    add(
        "distributed.timeout_seconds",
        int(*t.start() as i128, *t.end() as i128),
    );
    let s = &validate::SHAPES_IMAGE_SIZE;
    add("data.image_size", int(*s.start() as i128, *s.end() as i128));
    let reals = |at: &[&str], beyond: &[&str]| {
        let text = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        (text(at), text(beyond))
    };
    add(
        "train.lr",
        reals(&["1e-300", "10.0"], &["0.0", "-1.0", "nan", "inf"]),
    );
    add(
        "train.momentum",
        reals(&["0.0", "0.99"], &["1.0", "-0.1", "nan"]),
    );
    add(
        "train.weight_decay",
        reals(&["0.0", "1.0"], &["-1e-9", "inf"]),
    );
    add(
        "train.mix_probability",
        reals(&["0.0", "1.0"], &["1.5", "-0.5", "nan"]),
    );
    cases
}

fn number_case() -> impl Strategy<Value = (&'static str, String, bool)> {
    let cases = number_cases();
    (0..cases.len(), any::<prop::sample::Index>(), any::<bool>()).prop_map(
        move |(i, pick, beyond)| {
            let (key, at, out) = &cases[i];
            let values = if beyond { out } else { at };
            (*key, values[pick.index(values.len())].clone(), beyond)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: crate::fuzz_cases(128),
        ..Default::default()
    })]

    /// Any target file as any kind of file: read or refused naming the file, in time.
    #[test]
    fn any_file_kind_is_read_or_refused_by_name(target in target(), kind in file_kind()) {
        let dir = tempfile::tempdir().unwrap();
        let path = valid_files(dir.path(), target);
        make(&path, &kind, target);
        let (root, file) = (dir.path().to_path_buf(), path.clone());
        let outcome = bounded(20, move || read(&root, target, &file));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Err(why) => prop_assert!(false, "{target:?} as {kind:?}: {why}"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => prop_assert!(
                e.contains(&name) || e.contains("folder/train"),
                "{target:?} as {kind:?}: the error does not name {name}: {e}"
            ),
        }
    }

    /// Any ranged number at its bounds loads (or fails with a place); beyond, it is refused
    /// naming the key, before any work.
    #[test]
    fn numbers_at_and_beyond_their_ranges((key, value, beyond) in number_case()) {
        let set = Override::parse(&format!("{key}={value}")).unwrap();
        let loaded = bounded(20, move || config::load(None, &[set]).map(drop).map_err(|e| e.to_string()));
        match loaded {
            Err(why) => prop_assert!(false, "{key} = {value}: {why}"),
            Ok(Ok(())) => prop_assert!(!beyond, "{key} = {value} was accepted"),
            Ok(Err(e)) => prop_assert!(
                e.contains(key) && e.contains("--set"),
                "{key} = {value}: the error names neither the key nor the flag: {e}"
            ),
        }
    }
}
