//! The valid range of every value the host reads from the configuration, checked once
//! after loading, before any work: a value outside its range is an error naming the
//! file, line and key and stating the range. Nothing is clamped silently. Component
//! tables (`[components.<name>]`) are checked by their components.
//!
//! The ranges are listed in [`RANGES`] (the table in README.md is made from it); the
//! bounds of the checks are the constants below, and a unit test holds [`RANGES`] to
//! them.
use super::suggest::did_you_mean;
use super::{ConfigError, ConfigSource, DataConfig, ModelConfig, RunConfig, TrainConfig};
use sat_data::config::Recipe;
use std::fmt;
use std::ops::RangeInclusive;

/// Largest side of a square image.
pub const MAX_IMAGE_SIZE: i64 = 1024;
/// Largest training or evaluation batch.
pub const MAX_BATCH_SIZE: usize = 65_536;
/// Most epochs.
pub const MAX_EPOCHS: u32 = 100_000;
/// Largest `[model] width`.
pub const MAX_WIDTH: i64 = 1024;
/// Most bytes of images the generated `shapes` dataset may hold (train + test).
pub const MAX_SHAPES_BYTES: u128 = 8 << 30;
/// Largest train/test subset size.
pub const MAX_SAMPLES: usize = 100_000_000;

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
/// `model.width`.
pub const WIDTH: RangeInclusive<i64> = 1..=MAX_WIDTH;
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

/// Every checked key and its range, as documented.
pub const RANGES: &[(&str, &str)] = &[
    ("name", "one path component: letters, digits, `-`, `_`, `.`; not `.` or `..`; 1 to 200 bytes"),
    ("data.dataset", "shapes, cifar10, cifar100, tiny-imagenet, flowers17, image-folder, imagenet, shards"),
    ("data.recipe", "`cifar`; `imagenet` needs `data.dataset = \"shards\"`"),
    ("data.root", "`shards`: a local directory or an http:// URL (not https or object stores)"),
    ("data.image_size", "8 to 1024; `shapes`: 16 to 256"),
    ("data.classes", "2 to 6 (`shapes`)"),
    ("data.crop_padding", "0 to `data.image_size`"),
    ("data.train_size, data.test_size", "1 to 100 000 000 when set; `shapes`: at most 8 GiB of images in all"),
    ("data.crop_scale", "finite, 0 < lo ≤ hi ≤ 1"),
    ("data.crop_ratio", "finite, 0 < lo ≤ hi ≤ 100"),
    ("data.eval_crop", "finite, 0 < eval_crop ≤ 1"),
    ("data.workers", "1 to 1024 when set (default: all cores but one)"),
    ("data.prefetch", "1 to 1024"),
    ("data.shuffle_block", "1 to 1 000 000"),
    ("model.width", "1 to 1024"),
    ("model.mean", "finite; as many entries as `model.std`"),
    ("model.std", "finite, > 0"),
    ("train.epochs", "1 to 100 000"),
    ("train.batch_size, eval.batch_size", "1 to 65 536"),
    ("train.lr", "finite, > 0"),
    ("train.momentum", "0 ≤ momentum < 1"),
    ("train.weight_decay", "finite, ≥ 0"),
    ("train.milestones", "strictly increasing, each 1 to `train.epochs`"),
    ("train.gamma", "finite, > 0"),
    ("train.saliency_weights", "finite, ≥ 0, not all 0; one per `train.saliency` entry"),
    ("train.mix_probability", "0 to 1"),
    ("eval.epsilons", "ℓ∞ attacks: 0 to 1 (write 8/255, not 8); ℓ2 attacks: 0 to √(3·image_size²), the diameter of the image box"),
    ("eval.max_samples", "0 to 100 000 000 (0: all)"),
];

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
        .and_then(|()| check_eval(c))
        .and_then(|()| check_prefetch_memory(c))
        .map_err(|r| source.error_at(&r.key.split('.').collect::<Vec<_>>(), r.message))
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
                d.dataset,
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
                format!("data.root = {root:?}: only local directories and http:// URLs are read (for https or object stores, serve the shards over http or copy them)"),
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
                    "train.milestones {:?} must be strictly increasing",
                    t.milestones
                ),
            );
        }
    }
    real_in("train.mix_probability", t.mix_probability, PROBABILITY)?;
    check_saliency_weights(t)
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
    if name.len() > 200 {
        return Err(format!(
            "a run name has at most 200 bytes, this one {}",
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
        assert!(e.contains("/c.toml:4:1: data.prefetch = 1000 batches ahead") && e.contains("at most 8 GiB"), "{e}");
        let modest = text.replace("prefetch = 1000", "prefetch = 2").replace("512", "128");
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

    /// `n` as RANGES writes it: groups of three digits from 10 000 up.
    fn spaced(n: &str) -> String {
        if n.len() <= 4 {
            return n.to_string();
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

    fn ints<T: ToString>(r: RangeInclusive<T>) -> String {
        format!(
            "{} to {}",
            spaced(&r.start().to_string()),
            spaced(&r.end().to_string())
        )
    }

    fn reals(r: Interval, name: &str) -> String {
        let lt = |open: bool| if open { "<" } else { "≤" };
        if r.hi.is_infinite() {
            format!("{} {}", if r.lo_open { ">" } else { "≥" }, r.lo)
        } else if !r.lo_open && !r.hi_open {
            format!("{} to {}", r.lo, r.hi)
        } else {
            format!(
                "{} {} {name} {} {}",
                r.lo,
                lt(r.lo_open),
                lt(r.hi_open),
                r.hi
            )
        }
    }

    #[test]
    fn ranges_state_the_bounds_that_are_checked() {
        for (key, bounds) in [
            ("data.dataset", sat_data::DATASETS.join(", ")),
            ("data.image_size", ints(IMAGE_SIZE)),
            ("data.image_size", ints(SHAPES_IMAGE_SIZE)),
            ("data.classes", ints(CLASSES)),
            ("data.train_size, data.test_size", ints(SUBSET_SIZE)),
            ("data.crop_scale", reals(CROP_SCALE, "lo ≤ hi")),
            ("data.crop_ratio", reals(CROP_RATIO, "lo ≤ hi")),
            ("data.eval_crop", reals(EVAL_CROP, "eval_crop")),
            ("data.workers", ints(WORKERS)),
            ("data.prefetch", ints(PREFETCH)),
            ("data.shuffle_block", ints(SHUFFLE_BLOCK)),
            ("model.width", ints(WIDTH)),
            ("model.std", reals(POSITIVE, "")),
            ("train.epochs", ints(EPOCHS)),
            ("train.batch_size, eval.batch_size", ints(BATCH_SIZE)),
            ("train.lr", reals(POSITIVE, "")),
            ("train.momentum", reals(MOMENTUM, "momentum")),
            ("train.weight_decay", reals(NON_NEGATIVE, "")),
            ("train.gamma", reals(POSITIVE, "")),
            ("train.saliency_weights", reals(NON_NEGATIVE, "")),
            ("train.mix_probability", reals(PROBABILITY, "")),
            ("eval.max_samples", ints(EVAL_SAMPLES)),
        ] {
            let (_, stated) = RANGES
                .iter()
                .find(|(k, _)| *k == key)
                .unwrap_or_else(|| panic!("{key} is not in RANGES"));
            assert!(
                stated.contains(&bounds),
                "{key}: {stated:?} does not state {bounds:?}"
            );
        }
    }

    #[test]
    fn the_readme_table_has_a_row_for_every_key_of_ranges() {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let first_cells: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split(" | ").next())
            .collect();
        for key in RANGES.iter().flat_map(|(keys, _)| keys.split(", ")) {
            assert!(
                first_cells
                    .iter()
                    .any(|c| format!("`{c}").contains(&format!("`{key}`"))),
                "README.md's table of ranges has no row for `{key}`"
            );
        }
    }
}
