//! The valid range of every value the host reads from the configuration, checked once
//! after loading, before any work: a value outside its range is an error naming the
//! file, line and key and stating the range. Nothing is clamped silently. Component
//! tables (`[components.<name>]`) are checked by their components.
//!
//! The ranges are listed in [`RANGES`] (the table in README.md is made from it).
use super::{ConfigError, ConfigSource, RunConfig};

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

/// Every checked key and its range, as documented.
pub const RANGES: &[(&str, &str)] = &[
    ("name", "one path component: letters, digits, `-`, `_`, `.`; not `.` or `..`; 1 to 200 bytes"),
    ("data.image_size", "8 to 1024; `shapes`: 16 to 256"),
    ("data.classes", "2 to 6 (`shapes`)"),
    ("data.crop_padding", "0 to `data.image_size`"),
    ("data.train_size, data.test_size", "1 to 100 000 000 when set; `shapes`: at most 8 GiB of images in all"),
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
    ("eval.max_samples", "0 (all) to 100 000 000"),
];

/// Checks every range; the first value out of range is the error.
pub fn validate(c: &RunConfig, source: &ConfigSource) -> Result<(), ConfigError> {
    let err = |path: &[&str], message: String| Err(source.error_at(path, message));
    if let Err(m) = check_run_name(&c.name) {
        return err(&["name"], format!("name: {m}"));
    }
    let d = &c.data;
    let (min_size, max_size) = if d.dataset == "shapes" {
        (16, 256)
    } else {
        (8, MAX_IMAGE_SIZE)
    };
    if !(min_size..=max_size).contains(&d.image_size) {
        return err(
            &["data", "image_size"],
            format!(
                "data.image_size = {} is outside [{min_size}, {max_size}]{}",
                d.image_size,
                if d.dataset == "shapes" {
                    " (dataset shapes)"
                } else {
                    ""
                }
            ),
        );
    }
    if !(2..=6).contains(&d.classes) {
        return err(
            &["data", "classes"],
            format!("data.classes = {} is outside [2, 6]", d.classes),
        );
    }
    if !(0..=d.image_size).contains(&d.crop_padding) {
        return err(
            &["data", "crop_padding"],
            format!(
                "data.crop_padding = {} is outside [0, data.image_size = {}]",
                d.crop_padding, d.image_size
            ),
        );
    }
    for (key, size) in [("train_size", d.train_size), ("test_size", d.test_size)] {
        if let Some(n) = size {
            if !(1..=MAX_SAMPLES).contains(&n) {
                return err(
                    &["data", key],
                    format!("data.{key} = {n} is outside [1, {MAX_SAMPLES}]"),
                );
            }
        }
    }
    if d.dataset == "shapes" {
        let images = d.train_size.unwrap_or(4000) as u128 + d.test_size.unwrap_or(1000) as u128;
        let bytes = images * 3 * (d.image_size as u128).pow(2) * 4;
        if bytes > MAX_SHAPES_BYTES {
            let key = if d.train_size.is_some() {
                "train_size"
            } else {
                "test_size"
            };
            return err(
                &["data", key],
                format!(
                    "data.train_size + data.test_size = {images} generated images of {0}×{0} would take {1} GiB; at most {2} GiB",
                    d.image_size,
                    bytes >> 30,
                    MAX_SHAPES_BYTES >> 30
                ),
            );
        }
    }
    let m = &c.model;
    if !(1..=MAX_WIDTH).contains(&m.width) {
        return err(
            &["model", "width"],
            format!("model.width = {} is outside [1, {MAX_WIDTH}]", m.width),
        );
    }
    if m.mean.len() != m.std.len() {
        return err(
            &["model", "mean"],
            format!(
                "model.mean has {} entries, model.std {}: give both per channel, or neither",
                m.mean.len(),
                m.std.len()
            ),
        );
    }
    if let Some(v) = m.mean.iter().find(|v| !v.is_finite()) {
        return err(&["model", "mean"], format!("model.mean: {v} is not finite"));
    }
    if let Some(v) = m.std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return err(
            &["model", "std"],
            format!("model.std: {v} is outside (0, ∞)"),
        );
    }
    let t = &c.train;
    if !(1..=MAX_EPOCHS).contains(&t.epochs) {
        return err(
            &["train", "epochs"],
            format!("train.epochs = {} is outside [1, {MAX_EPOCHS}]", t.epochs),
        );
    }
    if !(1..=MAX_BATCH_SIZE).contains(&t.batch_size) {
        return err(
            &["train", "batch_size"],
            format!(
                "train.batch_size = {} is outside [1, {MAX_BATCH_SIZE}]",
                t.batch_size
            ),
        );
    }
    if !(t.lr.is_finite() && t.lr > 0.0) {
        return err(
            &["train", "lr"],
            format!(
                "train.lr = {} is outside (0, ∞): a learning rate is positive and finite",
                t.lr
            ),
        );
    }
    if !(0.0..1.0).contains(&t.momentum) {
        return err(
            &["train", "momentum"],
            format!("train.momentum = {} is outside [0, 1)", t.momentum),
        );
    }
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return err(
            &["train", "weight_decay"],
            format!("train.weight_decay = {} is outside [0, ∞)", t.weight_decay),
        );
    }
    if !(t.gamma.is_finite() && t.gamma > 0.0) {
        return err(
            &["train", "gamma"],
            format!("train.gamma = {} is outside (0, ∞)", t.gamma),
        );
    }
    for (i, &ms) in t.milestones.iter().enumerate() {
        if !(1..=t.epochs).contains(&ms) {
            return err(
                &["train", "milestones"],
                format!(
                    "train.milestones: {ms} is outside [1, train.epochs = {}]",
                    t.epochs
                ),
            );
        }
        if i > 0 && ms <= t.milestones[i - 1] {
            return err(
                &["train", "milestones"],
                format!(
                    "train.milestones {:?} must be strictly increasing",
                    t.milestones
                ),
            );
        }
    }
    if !(0.0..=1.0).contains(&t.mix_probability) {
        return err(
            &["train", "mix_probability"],
            format!(
                "train.mix_probability = {} is outside [0, 1]",
                t.mix_probability
            ),
        );
    }
    if !t.saliency_weights.is_empty() {
        if t.saliency_weights.len() != t.saliency.len() {
            return err(
                &["train", "saliency_weights"],
                format!(
                    "train.saliency_weights has {} entries for {} saliency sources",
                    t.saliency_weights.len(),
                    t.saliency.len()
                ),
            );
        }
        if let Some(w) = t
            .saliency_weights
            .iter()
            .find(|w| !(w.is_finite() && **w >= 0.0))
        {
            return err(
                &["train", "saliency_weights"],
                format!("train.saliency_weights: {w} is outside [0, ∞)"),
            );
        }
        if t.saliency_weights.iter().sum::<f64>() <= 0.0 {
            return err(
                &["train", "saliency_weights"],
                "train.saliency_weights are all 0: no source could be drawn".into(),
            );
        }
    }
    let e = &c.eval;
    if !(1..=MAX_BATCH_SIZE).contains(&e.batch_size) {
        return err(
            &["eval", "batch_size"],
            format!(
                "eval.batch_size = {} is outside [1, {MAX_BATCH_SIZE}]",
                e.batch_size
            ),
        );
    }
    if e.max_samples > MAX_SAMPLES {
        return err(
            &["eval", "max_samples"],
            format!(
                "eval.max_samples = {} is outside [0, {MAX_SAMPLES}]",
                e.max_samples
            ),
        );
    }
    let l2 = e.attacks.iter().any(|a| attack_norm(c, a) == Some("l2"));
    let linf = e.attacks.iter().any(|a| attack_norm(c, a) != Some("l2"));
    for eps in &e.epsilons {
        let v = eps.0;
        if !v.is_finite() || v < 0.0 {
            return err(
                &["eval", "epsilons"],
                format!("eval.epsilons: {v} is outside [0, 1]"),
            );
        }
        for (norm, used) in [("linf", linf), ("l2", l2)] {
            match budget_in_range(norm, v, d.image_size) {
                Err(why) if used => {
                    return err(&["eval", "epsilons"], format!("eval.epsilons: {why}"))
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
}
