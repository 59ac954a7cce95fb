//! The valid range of every value the host reads from the configuration, checked once
//! after loading, before any work: a value outside its range is an error naming the
//! file, line and key (or the flag or `--set` that gave it) and stating the range.
//! Nothing is clamped silently. Component tables (`[components.<name>]`) are checked by
//! their components.
//!
//! The bounds of the checks are the constants below; [`ranges`] states them, and the
//! table of ranges in README.md is [`ranges_table`] (a unit test compares the two).
use super::suggest::{did_you_mean, shorten, show_list};
use super::{
    ConfigError, ConfigSource, DataConfig, DistributedConfig, ModelConfig, OptimizerKind,
    RunConfig, TrainConfig,
};
use sat_data::config::Recipe;
use sat_models::{arch, Arch};
use std::fmt;
use std::ops::RangeInclusive;

/// Largest side of a square image.
pub const MAX_IMAGE_SIZE: i64 = 1024;
/// Largest training or evaluation batch.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Most epochs.
pub const MAX_EPOCHS: u32 = 100_000;
/// Most bytes of images the generated `shapes` dataset may hold (train + test).
pub const MAX_SHAPES_BYTES: u128 = 8 << 30;
/// Largest train/test subset size.
pub const MAX_SAMPLES: usize = 100_000_000;
/// Most bytes of a run name.
pub const MAX_NAME_BYTES: usize = 200;

/// `data.image_size`.
pub const IMAGE_SIZE: RangeInclusive<i64> = 8..=MAX_IMAGE_SIZE;
/// `data.image_size` of the generated `shapes` dataset.
pub const SHAPES_IMAGE_SIZE: RangeInclusive<i64> = 16..=256;
/// `data.classes` (`shapes`).
pub const CLASSES: RangeInclusive<i64> = 2..=6;
/// `data.train_size`, `data.test_size` when set.
pub const SUBSET_SIZE: RangeInclusive<usize> = 1..=MAX_SAMPLES;
/// `data.workers` when set.
pub const WORKERS: RangeInclusive<usize> = 1..=1024;
/// `data.prefetch`.
pub const PREFETCH: RangeInclusive<usize> = 1..=1024;
/// `data.shuffle_block`.
pub const SHUFFLE_BLOCK: RangeInclusive<usize> = 1..=1_000_000;
/// `data.crop_scale`, each end.
pub const CROP_SCALE: Interval = Interval::open_closed(0.0, 1.0);
/// `data.crop_ratio`, each end.
pub const CROP_RATIO: Interval = Interval::open_closed(0.0, 100.0);
/// `data.eval_crop`.
pub const EVAL_CROP: Interval = Interval::open_closed(0.0, 1.0);
/// `model.width` (the models' own range).
pub const WIDTH: RangeInclusive<i64> = arch::WIDTH;
/// `train.epochs`.
pub const EPOCHS: RangeInclusive<u32> = 1..=MAX_EPOCHS;
/// `train.batch_size`, `eval.batch_size`.
pub const BATCH_SIZE: RangeInclusive<usize> = 1..=MAX_BATCH_SIZE;
/// `train.momentum`.
pub const MOMENTUM: Interval = Interval::closed_open(0.0, 1.0);
/// `train.mix_probability`.
pub const PROBABILITY: Interval = Interval::closed(0.0, 1.0);
/// `eval.max_samples` (0: all).
pub const EVAL_SAMPLES: RangeInclusive<usize> = 0..=MAX_SAMPLES;
/// `model.std`, `train.lr`, `train.gamma`: positive and finite.
pub const POSITIVE: Interval = Interval::open(0.0, f64::INFINITY);
/// `train.weight_decay`, `train.saliency_weights`: non-negative and finite.
pub const NON_NEGATIVE: Interval = Interval::closed_open(0.0, f64::INFINITY);
/// `distributed.timeout_seconds`: a second to a day.
pub const TIMEOUT_SECONDS: RangeInclusive<u64> = 1..=86_400;
/// `distributed.backend`.
pub const BACKENDS: [&str; 3] = ["auto", "gloo", "nccl"];
/// `distributed.bucket_mb` (MiB): more than nothing, at most 1000.
pub const BUCKET_MB: Interval = Interval::open_closed(0.0, 1000.0);

/// One row of the table of ranges: the keys and their valid values.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeRow {
    /// Dotted keys.
    pub keys: &'static [&'static str],
    /// The valid values, in Markdown.
    pub valid: String,
}

fn row(keys: &'static [&'static str], valid: impl Into<String>) -> RangeRow {
    RangeRow {
        keys,
        valid: valid.into(),
    }
}

/// `n` with groups of three digits from 10 000 up: `65536`, `100 000`.
pub fn spaced(n: impl fmt::Display) -> String {
    let n = n.to_string();
    if n.len() <= 4 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return n;
    }
    let mut out = String::new();
    for (i, ch) in n.chars().enumerate() {
        if i > 0 && (n.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// `lo–hi`.
pub fn span<T: fmt::Display>(r: &RangeInclusive<T>) -> String {
    format!("{}–{}", spaced(r.start()), spaced(r.end()))
}

/// Every checked key and its range, as README.md states them; the numbers are the
/// constants the checks use.
pub fn ranges() -> Vec<RangeRow> {
    let ticked = |names: &[&'static str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows = vec![
        row(&["name"], format!("one path component: letters, digits, `-`, `_`, `.`; not `.` or `..`; 1–{MAX_NAME_BYTES} bytes")),
        row(&["data.dataset"], format!("{} (another name is refused with \"did you mean …?\")", ticked(&sat_data::DATASETS))),
        row(&["data.recipe"], "`cifar`; `imagenet` needs `data.dataset = \"shards\"`"),
        row(&["data.root"], "`shards`: a local directory or an `http://` URL (not https or object stores)"),
        row(&["data.image_size"], format!("{}; `shapes`: {}", span(&IMAGE_SIZE), span(&SHAPES_IMAGE_SIZE))),
        row(&["data.classes"], format!("{} (`shapes`)", span(&CLASSES))),
        row(&["data.crop_padding"], "0 to `data.image_size`"),
        row(&["data.train_size", "data.test_size"], format!("{} when set; `shapes`: at most {} GiB of generated images", span(&SUBSET_SIZE), MAX_SHAPES_BYTES >> 30)),
        row(&["data.crop_scale"], CROP_SCALE.describe("lo ≤ hi")),
        row(&["data.crop_ratio"], CROP_RATIO.describe("lo ≤ hi")),
        row(&["data.eval_crop"], EVAL_CROP.describe("eval_crop")),
        row(&["data.workers"], format!("{} when set (default: all cores but one)", span(&WORKERS))),
        row(&["data.prefetch"], format!("{}; with `shards`, (prefetch + workers) batches of decoded images at most {} GiB", span(&PREFETCH), MAX_PREFETCH_BYTES >> 30)),
        row(&["data.shuffle_block"], span(&SHUFFLE_BLOCK)),
        row(&["data.resize_masks"], "`false` (default: a mask of another size than its image is an error) or `true`"),
    ];
    rows.extend(model_and_train_ranges());
    rows.extend([
        row(&["eval.epsilons"], "ℓ∞ attacks: 0–1 (write `8/255`; `8` is refused with \"did you mean 8/255?\"); ℓ2 attacks (`norm = \"l2\"`): 0 to √(3·image_size²)"),
        row(&["eval.max_samples"], format!("{} (all) to {}", EVAL_SAMPLES.start(), spaced(EVAL_SAMPLES.end()))),
        row(&["distributed.timeout_seconds"], format!("{}, in every run (also of one process)", span(&TIMEOUT_SECONDS))),
        row(&["distributed.backend"], format!("{} (`nccl` needs a CUDA device)", ticked(&BACKENDS))),
        row(&["distributed.overlap"], "`true` (default: bucketed all-reduces under the backward pass) or `false` (one all-reduce after it)"),
        row(&["distributed.bucket_mb"], format!("{} (MiB; default 25, the first bucket at most 1)", BUCKET_MB.describe("bucket_mb"))),
        row(&["report.tensorboard"], "`true` (default: TensorBoard event files in the run directory) or `false`"),
        row(&["seed"], "any 64-bit unsigned integer"),
    ]);
    rows
}

/// The `[model]` and `[train]` rows of [`ranges`].
fn model_and_train_ranges() -> Vec<RangeRow> {
    let names: Vec<String> = sat_models::ARCHITECTURES
        .iter()
        .filter(|a| !a.starts_with("wrn-"))
        .map(|a| format!("`{a}`"))
        .collect();
    vec![
        row(&["model.arch"], format!(
            "{}, or `wrn-<depth>-<widen>` with depth {} (6n + 4) and widening factor {}; training must fit in memory: parameters, gradients and optimiser moments (4 bytes each) within `MemAvailable` on the CPU, the parameters alone on CUDA (GPU memory is not checked)",
            names.join(", "), span(&arch::WRN_DEPTH), span(&arch::WRN_WIDEN)
        )),
        row(&["model.width"], span(&WIDTH)),
        row(&["model.mean", "model.std"], format!("finite, as many entries each (or none); std {}", POSITIVE.describe(""))),
        row(&["train.epochs"], span(&EPOCHS)),
        row(&["train.batch_size", "eval.batch_size"], span(&BATCH_SIZE)),
        row(&["train.lr"], POSITIVE.describe("")),
        row(&["train.momentum"], MOMENTUM.describe("m")),
        row(&["train.weight_decay"], NON_NEGATIVE.describe("")),
        row(&["train.milestones"], "strictly increasing, each 1 to `train.epochs`"),
        row(&["train.gamma"], POSITIVE.describe("")),
        row(&["train.saliency_weights"], format!("one per `train.saliency` entry; {}, not all 0 (empty = equal)", NON_NEGATIVE.describe(""))),
        row(&["train.mix_probability"], PROBABILITY.describe("")),
        row(&["train.sync_batchnorm"], "`false` (default) or `true`: BatchNorm statistics over every rank's batch in a data-parallel run (a no-op in one process); not with `model.torchscript`"),
    ]
}

/// [`ranges`] as the Markdown table README.md holds.
pub fn ranges_table() -> String {
    let mut text = String::from("| key | valid values |\n|---|---|\n");
    for r in ranges() {
        let keys: Vec<String> = r.keys.iter().map(|k| format!("`{k}`")).collect();
        text += &format!("| {} | {} |\n", keys.join(", "), r.valid);
    }
    text
}

/// An interval of finite numbers, each end open or closed; an infinite `hi` bounds
/// nothing but finiteness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Lower end.
    pub lo: f64,
    /// Whether `lo` itself is outside.
    pub lo_open: bool,
    /// Upper end.
    pub hi: f64,
    /// Whether `hi` itself is outside.
    pub hi_open: bool,
}

impl Interval {
    const fn new(lo: f64, lo_open: bool, hi: f64, hi_open: bool) -> Self {
        Self {
            lo,
            lo_open,
            hi,
            hi_open,
        }
    }
    /// `[lo, hi]`.
    pub const fn closed(lo: f64, hi: f64) -> Self {
        Self::new(lo, false, hi, false)
    }
    /// `(lo, hi)`.
    pub const fn open(lo: f64, hi: f64) -> Self {
        Self::new(lo, true, hi, true)
    }
    /// `[lo, hi)`.
    pub const fn closed_open(lo: f64, hi: f64) -> Self {
        Self::new(lo, false, hi, true)
    }
    /// `(lo, hi]`.
    pub const fn open_closed(lo: f64, hi: f64) -> Self {
        Self::new(lo, true, hi, false)
    }

    /// The interval in words for the table of ranges: `0–1`, `> 0, finite`,
    /// `finite, 0 < name ≤ 1`.
    pub fn describe(&self, name: &str) -> String {
        let lt = |open: bool| if open { "<" } else { "≤" };
        if self.hi.is_infinite() {
            format!(
                "{} {}, finite",
                if self.lo_open { ">" } else { "≥" },
                self.lo
            )
        } else if !self.lo_open && !self.hi_open {
            format!("{}–{}", self.lo, self.hi)
        } else {
            format!(
                "finite, {} {} {name} {} {}",
                self.lo,
                lt(self.lo_open),
                lt(self.hi_open),
                self.hi
            )
        }
    }

    /// Whether `v` is finite and inside.
    pub fn contains(&self, v: f64) -> bool {
        let above = v > self.lo || (!self.lo_open && v == self.lo);
        let below = v < self.hi || (!self.hi_open && v == self.hi);
        v.is_finite() && above && below
    }
}

/// `(0, ∞)`, `[0, 1]`, …
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |v: f64| {
            if v.is_infinite() {
                "∞".to_string()
            } else {
                v.to_string()
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { '(' } else { '[' },
            end(self.lo),
            end(self.hi),
            if self.hi_open { ')' } else { ']' }
        )
    }
}

/// A refused value: the dotted key it is written at, and the message.
#[derive(Debug)]
struct Refusal {
    key: &'static str,
    message: String,
}

impl Refusal {
    /// The message with `text` appended.
    fn and(mut self, text: &str) -> Self {
        self.message.push_str(text);
        self
    }
}

/// The outcome of a check: the first refusal, if any.
type Checked = Result<(), Refusal>;

fn refuse(key: &'static str, message: impl Into<String>) -> Checked {
    Err(Refusal {
        key,
        message: message.into(),
    })
}

/// `key = v is outside [lo, hi]` unless `range` holds `v`.
fn int_in<T: PartialOrd + fmt::Display>(
    key: &'static str,
    v: T,
    range: RangeInclusive<T>,
) -> Checked {
    if range.contains(&v) {
        return Ok(());
    }
    refuse(
        key,
        format!(
            "{key} = {v} is outside [{}, {}]",
            range.start(),
            range.end()
        ),
    )
}

/// `key = v is outside (lo, hi]` (say) unless `range` holds `v`.
fn real_in(key: &'static str, v: f64, range: Interval) -> Checked {
    if range.contains(v) {
        return Ok(());
    }
    refuse(key, format!("{key} = {v} is outside {range}"))
}

/// `key: v is outside …` for the first entry of `values` that `range` does not hold.
fn each_in(key: &'static str, values: &[f64], range: Interval) -> Checked {
    match values.iter().find(|v| !range.contains(**v)) {
        Some(v) => refuse(key, format!("{key}: {v} is outside {range}")),
        None => Ok(()),
    }
}

/// Both ends of `[lo, hi]` in `range`, and `lo ≤ hi`.
fn pair_in(key: &'static str, [lo, hi]: [f64; 2], range: Interval) -> Checked {
    each_in(key, &[lo, hi], range)?;
    if lo > hi {
        return refuse(
            key,
            format!("{key} = [{lo}, {hi}] is not a range: its first entry is the lower end"),
        );
    }
    Ok(())
}

/// Checks every range; the first value out of range is the error.
pub fn validate(c: &RunConfig, source: &ConfigSource) -> Result<(), ConfigError> {
    check_run_name(&c.name)
        .or_else(|m| refuse("name", format!("name: {m}")))
        .and_then(|()| check_data(&c.data))
        .and_then(|()| check_model(&c.model))
        .and_then(|()| check_train(&c.train))
        .and_then(|()| check_sync_batchnorm(c))
        .and_then(|()| check_eval(c))
        .and_then(|()| check_distributed(&c.distributed))
        .and_then(|()| check_prefetch_memory(c))
        .and_then(|()| check_model_memory(c, &Memory::of(&c.device)))
        .map_err(|r| source.error_at(&r.key.split('.').collect::<Vec<_>>(), r.message))
}

/// `[distributed]`, in every run: a single-process run writes it into its config.toml,
/// which a data-parallel `--resume` reads.
fn check_distributed(d: &DistributedConfig) -> Checked {
    int_in(
        "distributed.timeout_seconds",
        d.timeout_seconds,
        TIMEOUT_SECONDS,
    )?;
    real_in("distributed.bucket_mb", d.bucket_mb, BUCKET_MB)?;
    if !BACKENDS.contains(&d.backend.trim()) {
        return refuse(
            "distributed.backend",
            format!(
                "distributed.backend: unknown backend `{}`{}; accepted: {}",
                shorten(&d.backend, 40),
                did_you_mean(d.backend.trim(), BACKENDS),
                BACKENDS.join(", ")
            ),
        );
    }
    Ok(())
}

/// The memory a model may take: what is available, and whether the training state
/// lives in it (the CPU) or only a copy of the parameters (checkpoints of a CUDA run).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Bytes available (`MemAvailable`), if known.
    pub available: Option<u128>,
    /// Whether the model trains in this memory.
    pub trains_here: bool,
}

impl Memory {
    /// This machine's memory for `device` (`"cpu"`, `"auto"` without CUDA: the model
    /// trains in it). GPU memory is not checked.
    pub fn of(device: &str) -> Self {
        let trains_here = device == "cpu" || (device == "auto" && !tch::Cuda::is_available());
        Self {
            available: arch::available_memory(),
            trains_here,
        }
    }
}

/// The dataset's number of classes for the size of the head: exact for the fixed
/// datasets, 1000 (ImageNet's) for those read from a directory.
fn head_classes(d: &DataConfig) -> i64 {
    match d.dataset.as_str() {
        "shapes" => d.classes,
        "cifar10" => 10,
        "cifar100" => 100,
        "tiny-imagenet" => 200,
        "flowers17" => 17,
        _ => 1000,
    }
}

/// The model of `[model]` and its training state (parameters, gradients, optimiser
/// moments; 4 bytes a value) fit in `memory`: refused, naming the estimate and what is
/// available, before anything is allocated. A TorchScript model is not estimated.
fn check_model_memory(c: &RunConfig, memory: &Memory) -> Checked {
    let m = &c.model;
    let (Some(available), None, Ok(parsed)) =
        (memory.available, &m.torchscript, Arch::parse(&m.arch))
    else {
        return Ok(());
    };
    let values = parsed.values(m.width, head_classes(&c.data));
    let moments = match c.train.optimizer {
        OptimizerKind::Adam => 2,
        OptimizerKind::Sgd if c.train.momentum > 0.0 => 1,
        OptimizerKind::Sgd => 0,
    };
    let (copies, what) = if memory.trains_here {
        (
            2 + moments,
            format!("with their gradients and {moments} optimiser moment(s), 4 bytes each, training takes"),
        )
    } else {
        (
            1,
            "their copy in this memory (checkpoints), 4 bytes each, takes".to_string(),
        )
    };
    let bytes = values.saturating_mul(copies * arch::BYTES_PER_VALUE);
    if bytes <= available {
        return Ok(());
    }
    let key = if parsed.uses_width() {
        "model.width"
    } else {
        "model.arch"
    };
    refuse(
        key,
        format!(
            "model.arch = {:?} with model.width = {}: {} parameters; {what} {}, more than the {} of memory available (MemAvailable): choose a smaller architecture{}",
            m.arch,
            m.width,
            spaced(values),
            arch::show_bytes(bytes),
            arch::show_bytes(available),
            if parsed.uses_width() { " or width" } else { "" }
        ),
    )
}

/// Most bytes of decoded images the batches a rank streams ahead may hold.
pub const MAX_PREFETCH_BYTES: u128 = 8 << 30;

/// The batches decoded ahead (`data.prefetch` of `train.batch_size` images of
/// `data.image_size`², and as many in the workers' hands) fit in
/// [`MAX_PREFETCH_BYTES`].
fn check_prefetch_memory(c: &RunConfig) -> Checked {
    let d = &c.data;
    let per_batch = c.train.batch_size as u128 * 3 * (d.image_size as u128).pow(2);
    let bytes = per_batch * (d.prefetch as u128 + d.worker_count() as u128);
    if d.dataset != "shards" || bytes <= MAX_PREFETCH_BYTES {
        return Ok(());
    }
    refuse(
        "data.prefetch",
        format!(
            "data.prefetch = {} batches ahead (and {} in the workers' hands) of {} images of {}×{} would hold {} GiB; at most {} GiB: lower data.prefetch or train.batch_size",
            d.prefetch,
            d.worker_count(),
            c.train.batch_size,
            d.image_size,
            d.image_size,
            bytes >> 30,
            MAX_PREFETCH_BYTES >> 30
        ),
    )
}

/// `[data]`.
fn check_data(d: &DataConfig) -> Checked {
    check_dataset(d)?;
    check_sizes(d)?;
    pair_in("data.crop_scale", d.crop_scale, CROP_SCALE)?;
    pair_in("data.crop_ratio", d.crop_ratio, CROP_RATIO)?;
    real_in("data.eval_crop", d.eval_crop, EVAL_CROP)?;
    if let Some(n) = d.workers {
        int_in("data.workers", n, WORKERS)?;
    }
    int_in("data.prefetch", d.prefetch, PREFETCH)?;
    int_in("data.shuffle_block", d.shuffle_block, SHUFFLE_BLOCK)
}

/// `data.dataset`, and what it decides: the recipe it can take, the root it can read.
fn check_dataset(d: &DataConfig) -> Checked {
    let datasets = sat_data::DATASETS;
    if !datasets.contains(&d.dataset.as_str()) {
        return refuse(
            "data.dataset",
            format!(
                "data.dataset: unknown dataset `{}`{}; accepted: {}",
                shorten(&d.dataset, 60),
                did_you_mean(&d.dataset, datasets),
                datasets.join(", ")
            ),
        );
    }
    if d.recipe == Recipe::Imagenet && d.dataset != "shards" {
        return refuse(
            "data.recipe",
            "data.recipe = \"imagenet\" needs data.dataset = \"shards\" (pack the dataset with `sat-host data pack`); the in-memory datasets use the cifar recipe",
        );
    }
    if let (true, Some(root)) = (d.dataset == "shards", &d.root) {
        let root = root.to_string_lossy();
        if root.contains("://") && !root.starts_with("http://") {
            return refuse(
                "data.root",
                format!("data.root = {:?}: only local directories and http:// URLs are read (for https or object stores, serve the shards over http or copy them)", shorten(&root, 200)),
            );
        }
    }
    Ok(())
}

/// `data.image_size`, `classes`, `crop_padding`, `train_size`, `test_size`.
fn check_sizes(d: &DataConfig) -> Checked {
    let shapes = d.dataset == "shapes";
    let (sizes, note) = if shapes {
        (SHAPES_IMAGE_SIZE, " (dataset shapes)")
    } else {
        (IMAGE_SIZE, "")
    };
    int_in("data.image_size", d.image_size, sizes).map_err(|r| r.and(note))?;
    int_in("data.classes", d.classes, CLASSES)?;
    if !(0..=d.image_size).contains(&d.crop_padding) {
        return refuse(
            "data.crop_padding",
            format!(
                "data.crop_padding = {} is outside [0, data.image_size = {}]",
                d.crop_padding, d.image_size
            ),
        );
    }
    if let Some(n) = d.train_size {
        int_in("data.train_size", n, SUBSET_SIZE)?;
    }
    if let Some(n) = d.test_size {
        int_in("data.test_size", n, SUBSET_SIZE)?;
    }
    if shapes {
        check_shapes_bytes(d)?;
    }
    Ok(())
}

/// The generated `shapes` images fit in [`MAX_SHAPES_BYTES`].
fn check_shapes_bytes(d: &DataConfig) -> Checked {
    let images = d.train_size.unwrap_or(4000) as u128 + d.test_size.unwrap_or(1000) as u128;
    let bytes = images * 3 * (d.image_size as u128).pow(2) * 4;
    if bytes <= MAX_SHAPES_BYTES {
        return Ok(());
    }
    let key = if d.train_size.is_some() {
        "data.train_size"
    } else {
        "data.test_size"
    };
    refuse(
        key,
        format!(
            "data.train_size + data.test_size = {images} generated images of {0}×{0} would take {1} GiB; at most {2} GiB",
            d.image_size,
            bytes >> 30,
            MAX_SHAPES_BYTES >> 30
        ),
    )
}

/// `[model]`.
fn check_model(m: &ModelConfig) -> Checked {
    if m.torchscript.is_none() {
        check_arch(&m.arch)?;
    }
    int_in("model.width", m.width, WIDTH)?;
    if m.mean.len() != m.std.len() {
        return refuse(
            "model.mean",
            format!(
                "model.mean has {} entries, model.std {}: give both per channel, or neither",
                m.mean.len(),
                m.std.len()
            ),
        );
    }
    if let Some(v) = m.mean.iter().find(|v| !v.is_finite()) {
        return refuse("model.mean", format!("model.mean: {v} is not finite"));
    }
    each_in("model.std", &m.std, POSITIVE)
}

/// `model.arch`: a known name, or a WRN of a depth and widening factor in range.
fn check_arch(name: &str) -> Checked {
    match Arch::parse(name) {
        Ok(_) => Ok(()),
        Err(sat_models::ModelError::UnknownArch(_)) => refuse(
            "model.arch",
            format!(
                "model.arch: unknown model arch `{}`{}; accepted: {}, wrn-<depth>-<widen>",
                shorten(name, 60),
                did_you_mean(name, sat_models::ARCHITECTURES),
                sat_models::ARCHITECTURES
                    .iter()
                    .filter(|a| !a.starts_with("wrn-"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => refuse("model.arch", format!("model.arch: {e}")),
    }
}

/// `[train]`.
fn check_train(t: &TrainConfig) -> Checked {
    int_in("train.epochs", t.epochs, EPOCHS)?;
    int_in("train.batch_size", t.batch_size, BATCH_SIZE)?;
    real_in("train.lr", t.lr, POSITIVE)
        .map_err(|r| r.and(": a learning rate is positive and finite"))?;
    real_in("train.momentum", t.momentum, MOMENTUM)?;
    real_in("train.weight_decay", t.weight_decay, NON_NEGATIVE)?;
    real_in("train.gamma", t.gamma, POSITIVE)?;
    for (i, &ms) in t.milestones.iter().enumerate() {
        if !(1..=t.epochs).contains(&ms) {
            return refuse(
                "train.milestones",
                format!(
                    "train.milestones: {ms} is outside [1, train.epochs = {}]",
                    t.epochs
                ),
            );
        }
        if i > 0 && ms <= t.milestones[i - 1] {
            return refuse(
                "train.milestones",
                format!(
                    "train.milestones {} must be strictly increasing",
                    show_list(&t.milestones)
                ),
            );
        }
    }
    real_in("train.mix_probability", t.mix_probability, PROBABILITY)?;
    check_saliency_weights(t)
}

/// `train.sync_batchnorm`: only the built-in architectures' BatchNorm layers can be
/// synchronised.
fn check_sync_batchnorm(c: &RunConfig) -> Checked {
    if c.train.sync_batchnorm && c.model.torchscript.is_some() {
        return refuse(
            "train.sync_batchnorm",
            "train.sync_batchnorm = true needs a model of `[model] arch`: a TorchScript model's BatchNorm layers cannot be synchronised (set it to false)",
        );
    }
    Ok(())
}

/// `train.saliency_weights`: empty (equal), or one drawing weight per source.
fn check_saliency_weights(t: &TrainConfig) -> Checked {
    let weights = &t.saliency_weights;
    if weights.is_empty() {
        return Ok(());
    }
    if weights.len() != t.saliency.len() {
        return refuse(
            "train.saliency_weights",
            format!(
                "train.saliency_weights has {} entries for {} saliency sources",
                weights.len(),
                t.saliency.len()
            ),
        );
    }
    each_in("train.saliency_weights", weights, NON_NEGATIVE)?;
    if weights.iter().sum::<f64>() <= 0.0 {
        return refuse(
            "train.saliency_weights",
            "train.saliency_weights are all 0: no source could be drawn",
        );
    }
    Ok(())
}

/// `[eval]`; the budgets depend on the attacks' norms (the component tables) and on
/// `data.image_size`.
fn check_eval(c: &RunConfig) -> Checked {
    let e = &c.eval;
    int_in("eval.batch_size", e.batch_size, BATCH_SIZE)?;
    int_in("eval.max_samples", e.max_samples, EVAL_SAMPLES)?;
    let l2 = e.attacks.iter().any(|a| attack_norm(c, a) == Some("l2"));
    let linf = e.attacks.iter().any(|a| attack_norm(c, a) != Some("l2"));
    for eps in &e.epsilons {
        let v = eps.0;
        if !v.is_finite() || v < 0.0 {
            return refuse(
                "eval.epsilons",
                format!("eval.epsilons: {v} is outside [0, 1]"),
            );
        }
        for (norm, used) in [("linf", linf), ("l2", l2)] {
            match budget_in_range(norm, v, c.data.image_size) {
                Err(why) if used => {
                    return refuse("eval.epsilons", format!("eval.epsilons: {why}"))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks an attack budget `v` of `norm` (`"linf"` or `"l2"`) on `image_size`² RGB
/// images in `[0, 1]`: finite, non-negative, at most 1 (ℓ∞) or the box's diameter (ℓ2).
pub fn budget_in_range(norm: &str, v: f64, image_size: i64) -> Result<(), String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{v} is outside [0, 1]"));
    }
    let l2_max = (3.0 * (image_size as f64).powi(2)).sqrt();
    if norm != "l2" && v > 1.0 {
        let hint = if v <= 255.0 {
            format!("; did you mean {v}/255?")
        } else {
            String::new()
        };
        return Err(format!(
            "{v} is outside [0, 1], the range of an ℓ∞ budget on images in [0, 1]{hint}"
        ));
    }
    if norm == "l2" && v > l2_max {
        return Err(format!("{v} is outside [0, {l2_max:.2}], the largest ℓ2 distance between two {image_size}×{image_size} images in [0, 1]"));
    }
    Ok(())
}

/// The norm an evaluation attack's tables set (`[eval.components.<name>] norm`, else
/// `[components.<name>] norm`), if any.
fn attack_norm<'a>(c: &'a RunConfig, name: &str) -> Option<&'a str> {
    c.eval
        .components
        .get(name)
        .and_then(|t| t.get("norm"))
        .or_else(|| c.components.get(name).and_then(|t| t.get("norm")))
        .and_then(|v| v.as_str())
}

/// Why a run name is not accepted, if it is not: one plain path component of letters,
/// digits, `-`, `_` and `.`, not `.` or `..`, 1 to 200 bytes.
pub fn check_run_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a run name must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!(
            "`{name}` is not a run name: it names an existing directory"
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a run name has at most {MAX_NAME_BYTES} bytes, this one {}",
            name.len()
        ));
    }
    if let Some(ch) = name
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} contains {ch:?}: a run name is one plain path component of letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, Override};

    fn refused(text: &str, sets: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let sets: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
        load(Some(&path), &sets)
            .unwrap_err()
            .to_string()
            .replace(&dir.path().display().to_string(), "")
    }

    #[test]
    fn every_out_of_range_value_names_its_place_key_and_range() {
        for (text, needle) in [
            ("[train]\nbatch_size = 0\n", "/c.toml:2:1: train.batch_size = 0 is outside [1, 65536]"),
            ("[train]\nepochs = 0\n", "/c.toml:2:1: train.epochs = 0 is outside [1, 100000]"),
            ("[train]\nlr = -0.1\n", "/c.toml:2:1: train.lr = -0.1 is outside (0, ∞)"),
            ("[train]\nlr = nan\n", "train.lr = NaN is outside (0, ∞)"),
            ("[train]\nmomentum = 1.0\n", "train.momentum = 1 is outside [0, 1)"),
            ("[train]\nweight_decay = -1.0\n", "train.weight_decay = -1 is outside [0, ∞)"),
            ("[train]\ngamma = 0.0\n", "train.gamma = 0 is outside (0, ∞)"),
            ("[train]\nepochs = 5\nmilestones = [3, 2]\n", "/c.toml:3:1: train.milestones [3, 2] must be strictly increasing"),
            ("[train]\nepochs = 5\nmilestones = [6]\n", "train.milestones: 6 is outside [1, train.epochs = 5]"),
            ("[train]\nmix_probability = 1.5\n", "train.mix_probability = 1.5 is outside [0, 1]"),
            ("[train]\nsaliency = [\"masks\"]\nsaliency_weights = [-1.0]\n", "train.saliency_weights: -1 is outside [0, ∞)"),
            ("[data]\ncrop_padding = 1000000\n", "/c.toml:2:1: data.crop_padding = 1000000 is outside [0, data.image_size = 32]"),
            ("[data]\nimage_size = 100000\n", "data.image_size = 100000 is outside [16, 256] (dataset shapes)"),
            ("[data]\nclasses = 9\n", "data.classes = 9 is outside [2, 6]"),
            ("[data]\ntrain_size = 0\n", "data.train_size = 0 is outside [1, 100000000]"),
            ("[data]\ntrain_size = 90000000\n", "at most 8 GiB"),
            ("[model]\nwidth = 0\n", "model.width = 0 is outside [1, 1024]"),
            ("[model]\nmean = [0.5]\nstd = [0.0]\n", "model.std: 0 is outside (0, ∞)"),
            ("[eval]\nbatch_size = 0\n", "eval.batch_size = 0 is outside [1, 65536]"),
            ("[eval]\nepsilons = [8]\n", "/c.toml:2:1: eval.epsilons: 8 is outside [0, 1], the range of an ℓ∞ budget on images in [0, 1]; did you mean 8/255?"),
            ("[eval]\nepsilons = [1e30]\n", "eval.epsilons: 1000000000000000000000000000000 is outside [0, 1]"),
            ("[eval]\nepsilons = [100]\n[components.pgd]\nnorm = \"l2\"\n", "eval.epsilons: 100 is outside [0, 55.43]"),
            ("name = \"../elsewhere\"\n", "/c.toml:1:1: name: \"../elsewhere\" contains '/'"),
            ("name = \"..\"\n", "name: `..` is not a run name"),
            ("name = \"\"\n", "name: a run name must not be empty"),
            ("name = \"a\\nb\"\n", "contains '\\n'"),
        ] {
            let e = refused(text, &[]);
            assert!(e.contains(needle), "{text:?}\n  got  {e}\n  want {needle}");
        }
        // An ℓ2 budget above 1 is fine; a command-line value is named as such.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[eval]\nepsilons = [2.5]\n[components.pgd]\nnorm = \"l2\"\n",
        )
        .unwrap();
        assert!(load(Some(&path), &[]).is_ok());
        let e = refused("", &["train.batch_size=0"]);
        assert!(
            e.starts_with("--set train.batch_size: train.batch_size = 0 is outside"),
            "{e}"
        );
    }

    #[test]
    fn the_defaults_and_the_examples_are_valid() {
        let (c, s) = load(None, &[]).unwrap();
        validate(&c, &s).unwrap();
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(examples).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(Some(&path), &[]).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    fn accepted(text: &str) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path), &[]).is_ok()
    }

    #[test]
    fn every_out_of_range_loading_value_names_its_place_key_and_range() {
        for (text, needle) in [
            ("[data]\nworkers = 0\n", "/c.toml:2:1: data.workers = 0 is outside [1, 1024]"),
            ("[data]\nworkers = 2000\n", "/c.toml:2:1: data.workers = 2000 is outside [1, 1024]"),
            ("[data]\nprefetch = 0\n", "/c.toml:2:1: data.prefetch = 0 is outside [1, 1024]"),
            ("[data]\nprefetch = 1025\n", "data.prefetch = 1025 is outside [1, 1024]"),
            ("[data]\nshuffle_block = 0\n", "/c.toml:2:1: data.shuffle_block = 0 is outside [1, 1000000]"),
            ("[data]\nshuffle_block = 1000001\n", "data.shuffle_block = 1000001 is outside [1, 1000000]"),
            ("[data]\ncrop_scale = [0.0, 1.0]\n", "/c.toml:2:1: data.crop_scale: 0 is outside (0, 1]"),
            ("[data]\ncrop_scale = [0.5, 1.5]\n", "data.crop_scale: 1.5 is outside (0, 1]"),
            ("[data]\ncrop_scale = [nan, 1.0]\n", "data.crop_scale: NaN is outside (0, 1]"),
            ("[data]\ncrop_scale = [0.9, 0.1]\n", "/c.toml:2:1: data.crop_scale = [0.9, 0.1] is not a range: its first entry is the lower end"),
            ("[data]\ncrop_ratio = [-1.0, 1.0]\n", "/c.toml:2:1: data.crop_ratio: -1 is outside (0, 100]"),
            ("[data]\ncrop_ratio = [0.75, 200.0]\n", "data.crop_ratio: 200 is outside (0, 100]"),
            ("[data]\ncrop_ratio = [0.75, inf]\n", "data.crop_ratio: inf is outside (0, 100]"),
            ("[data]\ncrop_ratio = [2.0, 0.5]\n", "data.crop_ratio = [2, 0.5] is not a range"),
            ("[data]\neval_crop = 0.0\n", "/c.toml:2:1: data.eval_crop = 0 is outside (0, 1]"),
            ("[data]\neval_crop = 1.5\n", "data.eval_crop = 1.5 is outside (0, 1]"),
            ("[data]\neval_crop = nan\n", "data.eval_crop = NaN is outside (0, 1]"),
        ] {
            let e = refused(text, &[]);
            assert!(e.contains(needle), "{text:?}\n  got  {e}\n  want {needle}");
        }
        let e = refused("", &["data.workers=0"]);
        assert!(
            e.starts_with("--set data.workers: data.workers = 0 is outside [1, 1024]"),
            "{e}"
        );
        assert!(accepted(
            "[data]\nworkers = 1\nprefetch = 1024\nshuffle_block = 1000000\ncrop_scale = [1.0, 1.0]\ncrop_ratio = [0.01, 100.0]\neval_crop = 1.0\n"
        ));
    }

    #[test]
    fn an_unknown_dataset_is_named_with_the_nearest_and_the_accepted_names() {
        assert_eq!(
            refused("[data]\nimage_size = 64\ndataset = \"cifar1O\"\n", &[]),
            "/c.toml:3:1: data.dataset: unknown dataset `cifar1O`; did you mean `cifar10`?; \
             accepted: shapes, cifar10, cifar100, tiny-imagenet, flowers17, image-folder, imagenet, shards"
        );
        assert_eq!(
            refused("[data]\ndataset = \"mnist\"\n", &[]),
            "/c.toml:2:1: data.dataset: unknown dataset `mnist`; \
             accepted: shapes, cifar10, cifar100, tiny-imagenet, flowers17, image-folder, imagenet, shards"
        );
        let e = refused("", &["data.dataset=\"shard\""]);
        assert!(
            e.starts_with("--set data.dataset: data.dataset: unknown dataset `shard`; did you mean `shards`?;"),
            "{e}"
        );
        for name in sat_data::DATASETS {
            assert!(
                accepted(&format!("[data]\ndataset = \"{name}\"\n")),
                "{name}"
            );
        }
    }

    #[test]
    fn batches_streamed_ahead_are_bounded_in_memory() {
        let text = "[data]\ndataset = \"shards\"\nimage_size = 1024\nprefetch = 1000\nworkers = 4\n[train]\nbatch_size = 512\n";
        let e = refused(text, &[]);
        assert!(
            e.contains("/c.toml:4:1: data.prefetch = 1000 batches ahead")
                && e.contains("at most 8 GiB"),
            "{e}"
        );
        let modest = text
            .replace("prefetch = 1000", "prefetch = 2")
            .replace("512", "128");
        assert!(accepted(&modest));
    }

    #[test]
    fn the_imagenet_recipe_needs_shards_and_shards_are_local_or_http() {
        for dataset in ["shapes", "cifar10", "imagenet", "image-folder"] {
            let text = format!("[data]\ndataset = \"{dataset}\"\nrecipe = \"imagenet\"\n");
            assert_eq!(
                refused(&text, &[]),
                "/c.toml:3:1: data.recipe = \"imagenet\" needs data.dataset = \"shards\" \
                 (pack the dataset with `sat-host data pack`); the in-memory datasets use the cifar recipe",
                "{dataset}"
            );
        }
        for root in [
            "https://example.org/imagenet",
            "s3://bucket/imagenet",
            "gs://b/x",
        ] {
            let text =
                format!("[data]\ndataset = \"shards\"\nroot = \"{root}\"\nrecipe = \"imagenet\"\n");
            let e = refused(&text, &[]);
            let want = format!("/c.toml:3:1: data.root = \"{root}\": only local directories and http:// URLs are read");
            assert!(e.starts_with(&want), "{root}\n  got  {e}\n  want {want}");
        }
        for root in [
            "http://127.0.0.1:8000/imagenet",
            "packed/imagenet",
            "/data/imagenet",
        ] {
            let text = format!("[data]\ndataset = \"shards\"\nroot = \"{root}\"\nrecipe = \"imagenet\"\nimage_size = 224\n");
            assert!(accepted(&text), "{root}");
        }
        // Other datasets' roots are directories, read (and refused) by their readers.
        assert!(accepted(
            "[data]\ndataset = \"cifar10\"\nroot = \"s3://bucket/cifar\"\n"
        ));
    }

    /// The lines between README.md's markers of the host's table of ranges.
    fn readme_section(begin: &str) -> Option<String> {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let (_, after) = readme.split_once(begin)?;
        let (section, _) = after.split_once("<!-- END ranges")?;
        Some(section.trim_start_matches(" -->").trim().to_string() + "\n")
    }

    #[test]
    fn the_readme_table_of_ranges_is_the_one_the_checks_state() {
        let begin =
            "<!-- BEGIN ranges: sat-host (host/src/config/validate.rs; its test ranges_table) -->";
        let expected = ranges_table();
        assert!(
            readme_section(begin).as_deref() == Some(expected.as_str()),
            "README.md's table of ranges differs from validate::ranges_table(); between\n{begin}\nand <!-- END ranges --> it should read:\n\n{expected}"
        );
    }

    #[test]
    fn every_range_states_the_bounds_that_are_checked() {
        let table = ranges_table();
        for bounds in [
            "8–1024",
            "16–256",
            "2–6",
            "1–100 000 000",
            "1–1024",
            "1–1 000 000",
            "depth 10–1000",
            "widening factor 1–64",
            "1–65 536",
            "0 (all) to 100 000 000",
            "1–86 400",
            "finite, 0 < lo ≤ hi ≤ 1",
            "finite, 0 < lo ≤ hi ≤ 100",
            "finite, 0 ≤ m < 1",
            "> 0, finite",
            "≥ 0, finite",
            "`auto`, `gloo`, `nccl`",
        ] {
            assert!(table.contains(bounds), "{bounds} is not stated:\n{table}");
        }
        assert_eq!(spaced(65536), "65 536");
        assert_eq!(spaced(1024), "1024");
        assert_eq!(span(&TIMEOUT_SECONDS), "1–86 400");
    }

    #[test]
    fn architectures_and_their_sizes_are_ranged_before_any_allocation() {
        for (text, needle) in [
            ("[model]\narch = \"wrn-28-100000\"\n", "/c.toml:2:1: model.arch: model arch `wrn-28-100000`: the widening factor 100000 is outside [1, 64]"),
            ("[model]\narch = \"wrn-1000004-10\"\n", "model.arch: model arch `wrn-1000004-10`: the depth 1000004 is outside [10, 1000]"),
            ("[model]\narch = \"wrn-27-10\"\n", "/c.toml:2:1: model.arch: wrn-27-10: depth must be 6n + 4"),
            ("[model]\narch = \"resnet81\"\n", "/c.toml:2:1: model.arch: unknown model arch `resnet81`; did you mean `resnet18`?; accepted: small-cnn, mlp"),
            ("[model]\nwidth = 100000\n", "/c.toml:2:1: model.width = 100000 is outside [1, 1024]"),
        ] {
            let e = refused(text, &[]);
            assert!(e.contains(needle), "{text:?}\n  got  {e}\n  want {needle}");
        }
        let e = refused("", &[&format!("model.arch=\"{}\"", "x".repeat(100_000))]);
        assert!(e.len() < 400 && e.contains("… (100000 bytes)"), "{e}");
        assert!(accepted("[model]\narch = \"wrn-28-10\"\n"));
        // A TorchScript model's arch is not read.
        let dir = tempfile::tempdir().unwrap();
        let text = "[model]\narch = \"nonsense\"\ntorchscript = \"m.pt\"\n";
        std::fs::write(dir.path().join("c.toml"), text).unwrap();
        assert!(load(Some(&dir.path().join("c.toml")), &[]).is_ok());
    }

    fn config(text: &str) -> RunConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_training_state_must_fit_in_the_memory_available() {
        let gib = |n: u128| n << 30;
        let cpu = |available| Memory {
            available: Some(available),
            trains_here: true,
        };
        let wrn = config("[model]\narch = \"wrn-1000-64\"\n");
        let e = check_model_memory(&wrn, &cpu(gib(128))).unwrap_err();
        assert_eq!(e.key, "model.arch");
        assert_eq!(
            e.message,
            "model.arch = \"wrn-1000-64\" with model.width = 32: 65 712 431 606 parameters; \
             with their gradients and 2 optimiser moment(s), 4 bytes each, training takes 979.2 GiB, \
             more than the 128.0 GiB of memory available (MemAvailable): choose a smaller architecture"
        );
        // WRN-28-10 (36.5 M parameters): 584 MB with Adam, 438 MB with SGD and momentum.
        let small = config("[model]\narch = \"wrn-28-10\"\n");
        assert!(check_model_memory(&small, &cpu(gib(1))).is_ok());
        assert!(check_model_memory(&small, &cpu(500 << 20)).is_err());
        let sgd = config("[model]\narch = \"wrn-28-10\"\n[train]\noptimizer = \"sgd\"\n");
        assert!(check_model_memory(&sgd, &cpu(500 << 20)).is_ok());
        // On CUDA only the parameters pass through this memory; unknown memory: no check.
        let cuda = Memory {
            available: Some(200 << 20),
            trains_here: false,
        };
        assert!(check_model_memory(&small, &cuda).is_ok());
        let none = Memory {
            available: None,
            trains_here: true,
        };
        assert!(check_model_memory(&wrn, &none).is_ok());
        // A wide ResNet-50 names its width.
        let wide = config("[model]\narch = \"resnet50\"\nwidth = 1024\n");
        assert_eq!(
            check_model_memory(&wide, &cpu(gib(16))).unwrap_err().key,
            "model.width"
        );
        // The whole check, through load: about 800 GB, more than this machine has.
        let e = refused("device = \"cpu\"\n[model]\narch = \"wrn-1000-64\"\n", &[]);
        assert!(
            e.starts_with("/c.toml:3:1: model.arch = \"wrn-1000-64\""),
            "{e}"
        );
    }

    #[test]
    fn distributed_values_are_checked_in_every_run() {
        for (text, needle) in [
            ("[distributed]\ntimeout_seconds = 0\n", "/c.toml:2:1: distributed.timeout_seconds = 0 is outside [1, 86400]"),
            ("[distributed]\ntimeout_seconds = 86401\n", "distributed.timeout_seconds = 86401 is outside [1, 86400]"),
            ("[distributed]\nbackend = \"ncl\"\n", "/c.toml:2:1: distributed.backend: unknown backend `ncl`; did you mean `nccl`?; accepted: auto, gloo, nccl"),
            ("[distributed]\nbucket_mb = 0\n", "/c.toml:2:1: distributed.bucket_mb = 0 is outside (0, 1000]"),
            ("[distributed]\nbucket_mb = 1001\n", "distributed.bucket_mb = 1001 is outside (0, 1000]"),
            ("[distributed]\nbucket_mb = nan\n", "distributed.bucket_mb = NaN is outside (0, 1000]"),
        ] {
            let e = refused(text, &[]);
            assert!(e.contains(needle), "{text:?}\n  got  {e}\n  want {needle}");
        }
        assert!(accepted(
            "[distributed]\ntimeout_seconds = 86400\nbackend = \"gloo\"\n"
        ));
        assert!(accepted(
            "[distributed]\ntimeout_seconds = 1\nbackend = \"nccl\"\n"
        ));
        assert!(accepted(
            "[distributed]\noverlap = false\nbucket_mb = 0.0001\n"
        ));
        assert!(accepted("[distributed]\noverlap = true\nbucket_mb = 1000\n"));
    }

    #[test]
    fn sync_batchnorm_is_refused_with_a_torchscript_model() {
        let e = refused(
            "[model]\ntorchscript = \"m.pt\"\n[train]\nsync_batchnorm = true\n",
            &[],
        );
        assert!(
            e.contains("/c.toml:4:1: train.sync_batchnorm = true needs a model of `[model] arch`"),
            "{e}"
        );
        let e = refused(
            "[model]\ntorchscript = \"m.pt\"\n",
            &["train.sync_batchnorm=true"],
        );
        assert!(e.contains("train.sync_batchnorm"), "{e}");
        assert!(accepted("[train]\nsync_batchnorm = true\n"));
        assert!(accepted(
            "[model]\narch = \"mlp\"\n[train]\nsync_batchnorm = true\n"
        ));
        assert!(!RunConfig::default().train.sync_batchnorm);
    }
}
