//! Run configuration: TOML file, `--set key=value` overrides and CLI flags, with errors
//! that name the file, line, column and key.
use crate::suggest::did_you_mean;
use sat_core::Epsilon;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Everything a run needs. Every section and key has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Name of the run; its directory is `<runs_dir>/<name>`.
    pub name: String,
    /// The one seed behind data generation and order, augmentation, initialisation and attacks.
    pub seed: u64,
    /// `"auto"` (CUDA when present), `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub device: String,
    /// cuDNN benchmark mode on CUDA: cuDNN times its convolution algorithms on the
    /// first batch of each shape and keeps the fastest (faster steps; run-to-run results
    /// are not bitwise identical). Ignored on the CPU.
    pub cudnn_benchmark: bool,
    /// Where run directories are made (relative to the working directory).
    pub runs_dir: PathBuf,
    /// Extra plugin libraries.
    pub plugins: PluginsConfig,
    /// The dataset.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Training.
    pub train: TrainConfig,
    /// Evaluation after training.
    pub eval: EvalConfig,
    /// Per-component configuration tables, `[components.<name>]`.
    pub components: BTreeMap<String, toml::Table>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            device: "auto".into(),
            cudnn_benchmark: true,
            runs_dir: PathBuf::from("runs"),
            plugins: PluginsConfig::default(),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            eval: EvalConfig::default(),
            components: BTreeMap::new(),
        }
    }
}

/// `[plugins]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugin libraries or directories of them, relative to the config file.
    pub paths: Vec<PathBuf>,
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset: `"shapes"` (generated, with boxes and masks), `"cifar10"`, `"cifar100"`,
    /// `"tiny-imagenet"`, `"flowers17"` or `"image-folder"`.
    pub dataset: String,
    /// Directory of a dataset read from files (relative to the working directory).
    pub root: Option<PathBuf>,
    /// Training images: how many `shapes` generates (default 4000), or a seeded subset
    /// of a real dataset (default: all).
    pub train_size: Option<usize>,
    /// Test images, as `train_size` (`shapes` default 1000).
    pub test_size: Option<usize>,
    /// Side of the square images; files of another size are resized.
    pub image_size: i64,
    /// Number of classes of `shapes` (2 to 6).
    pub classes: i64,
    /// CIFAR-100 labels: `"fine"` (100 classes) or `"coarse"` (20).
    pub cifar100_labels: crate::data::cifar::Cifar100Labels,
    /// Samples without a mask in a format with masks: `"keep"` (the `masks` plugin's
    /// `fallback` applies) or `"skip"`.
    pub missing_masks: crate::data::MissingMasks,
    /// Random crop (with this zero padding) and horizontal flip during training.
    pub crop_padding: i64,
    /// Random horizontal flips during training.
    pub flip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "shapes".into(),
            root: None,
            train_size: None,
            test_size: None,
            image_size: 32,
            classes: 6,
            cifar100_labels: crate::data::cifar::Cifar100Labels::Fine,
            missing_masks: crate::data::MissingMasks::Keep,
            crop_padding: 2,
            flip: true,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `"small-cnn"`, `"resnet10"`, `"resnet18"`, `"resnet34"`, `"preact-resnet18"` or
    /// `"wrn-<depth>-<widen>"` (e.g. `"wrn-28-10"`).
    pub arch: String,
    /// Channels of the first stage (not used by WRNs).
    pub width: i64,
    /// Per-channel mean subtracted inside the model (empty = no normalisation).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation divided by inside the model.
    pub std: Vec<f64>,
    /// A TorchScript file (images in `[0, 1]` to logits) used instead of `arch`, for
    /// evaluation and attacks; relative to the working directory.
    pub torchscript: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: "small-cnn".into(),
            width: 32,
            mean: Vec::new(),
            std: Vec::new(),
            torchscript: None,
        }
    }
}

/// Optimiser choice.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam.
    Adam,
    /// SGD with momentum.
    Sgd,
}

/// How often the saliency source is drawn among several.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SaliencyDraw {
    /// A fresh draw for every batch.
    Batch,
    /// One draw per epoch (the paper's ensemble of teachers).
    Epoch,
}

/// The training objective.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// Cross-entropy on the model's inputs (clean or attacked).
    Ce,
    /// TRADES: `CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))`.
    Trades,
}

/// `[train]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: u32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// `"adam"` or `"sgd"`.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay (L2, added to the gradient as in `torch.optim`).
    pub weight_decay: f64,
    /// Learning-rate schedule: `"constant"`, `"multistep"`, `"cosine"` or `"one-cycle"`.
    pub schedule: crate::schedule::ScheduleKind,
    /// Epochs after which `multistep` multiplies the rate by `gamma`.
    pub milestones: Vec<u32>,
    /// Factor of `multistep`.
    pub gamma: f64,
    /// Mixed precision (float16 autocast with dynamic loss scaling) on CUDA; ignored,
    /// with a warning, on the CPU.
    pub amp: bool,
    /// Saliency sources; with several, one is drawn per batch (weights below).
    pub saliency: Vec<String>,
    /// Drawing weights of the saliency sources (empty = equal).
    pub saliency_weights: Vec<f64>,
    /// How often a saliency source is drawn: `"batch"` or `"epoch"`.
    pub saliency_draw: SaliencyDraw,
    /// The attack that makes training inputs; empty = standard training.
    pub attack: String,
    /// A second attack used instead of `attack` on a batch with probability
    /// `mix_probability` (SAT + PGD: `attack = "pgd"`, `mix = "sat"`); empty = none.
    pub mix: String,
    /// Per-batch probability of using `mix`.
    pub mix_probability: f64,
    /// `"ce"` or `"trades"`.
    pub loss: LossKind,
    /// β of the TRADES loss (6 in TRADES, 1 in SAT + TRADES).
    pub trades_beta: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 128,
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            schedule: crate::schedule::ScheduleKind::Constant,
            milestones: Vec::new(),
            gamma: 0.1,
            amp: false,
            saliency: Vec::new(),
            saliency_weights: Vec::new(),
            saliency_draw: SaliencyDraw::Batch,
            attack: String::new(),
            mix: String::new(),
            mix_probability: 0.5,
            loss: LossKind::Ce,
            trades_beta: 6.0,
        }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Attacks for robust accuracy (each at every epsilon).
    pub attacks: Vec<String>,
    /// Budgets.
    pub epsilons: Vec<Epsilon>,
    /// Test images used for robust accuracy (0 = all).
    pub max_samples: usize,
    /// Evaluation batch size.
    pub batch_size: usize,
    /// Also measure the mean Etmann alignment of the model (on `max_samples` images).
    pub alignment: bool,
    /// Per-component settings for evaluation only, `[eval.components.<name>]`, laid over
    /// `[components.<name>]` (e.g. PGD-5 for training, PGD-10 for evaluation).
    pub components: BTreeMap<String, toml::Table>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            attacks: vec!["pgd".into()],
            epsilons: [2.0, 4.0, 8.0].iter().map(|v| Epsilon(v / 255.0)).collect(),
            max_samples: 500,
            batch_size: 250,
            alignment: true,
            components: BTreeMap::new(),
        }
    }
}

/// A place in the configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, or `--set` for command-line overrides.
    pub file: String,
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((l, c)) => write!(f, "{}:{l}:{c}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A configuration error with its place.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// Where.
    pub location: Location,
    /// What.
    pub message: String,
}

/// The configuration text a run was built from, for locating keys in errors.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file, if any.
    pub path: Option<PathBuf>,
    /// Its text (empty without a file).
    pub text: String,
}

impl ConfigSource {
    /// The display name of the file.
    pub fn file_name(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into())
    }

    /// Where the key at `path` (e.g. `["components", "pgd", "steps"]`) is written, or
    /// `--set <key>` if the file does not contain it.
    pub fn locate<S: AsRef<str>>(&self, path: &[S]) -> Location {
        let line_col = key_span(&self.text, path).map(|offset| line_col(&self.text, offset));
        match line_col {
            Some(lc) => Location {
                file: self.file_name(),
                line_col: Some(lc),
            },
            None => Location {
                file: format!(
                    "--set {}",
                    path.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".")
                ),
                line_col: None,
            },
        }
    }

    /// An error at the key `path`.
    pub fn error_at<S: AsRef<str>>(&self, path: &[S], message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: self.locate(path),
            message: message.into(),
        }
    }
}

fn key_span<S: AsRef<str>>(text: &str, path: &[S]) -> Option<usize> {
    let doc = text.parse::<toml_edit::Document<String>>().ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let (last, parents) = path.split_last()?;
    for part in parents {
        table = table.get(part.as_ref())?.as_table_like()?;
    }
    table.key(last.as_ref())?.span().map(|s| s.start)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Splits a dotted key into its segments; a segment may be quoted as in TOML
/// (`components."gradcam++".layer`).
fn split_key(key: &str) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in the key".into());
    }
    Ok(parts.into_iter().map(|p| p.trim().to_owned()).collect())
}

/// A `--set key.path=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path.
    pub key: Vec<String>,
    /// Parsed value (TOML syntax; a bare word is a string).
    pub value: toml::Value,
}

impl Override {
    /// Parses `key.path=value`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected key=value"))?;
        let key = split_key(key.trim()).map_err(|m| format!("`{text}`: {m}"))?;
        if key.iter().any(String::is_empty) {
            return Err(format!("`{text}`: empty key segment"));
        }
        let value = value.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        Ok(Self { key, value })
    }

    fn apply(&self, root: &mut toml::Table) -> Result<(), String> {
        let (last, parents) = self.key.split_last().expect("non-empty key");
        let mut table = root;
        for part in parents {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("`{}`: `{part}` is not a table", self.key.join(".")))?;
        }
        table.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

/// Turns a toml/serde error into a message with a suggestion for unknown keys and values.
fn explain(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
        if let Some((bad, expected)) = ticked.split_first() {
            let what = if message.starts_with("unknown field") {
                "key"
            } else {
                "value"
            };
            let accepted = if expected.is_empty() {
                "nothing".to_owned()
            } else {
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return format!(
                "unknown {what} `{bad}`{}; accepted: {accepted}",
                did_you_mean(bad, expected.iter().copied())
            );
        }
    }
    message.to_owned()
}

/// Loads the configuration: the file (or defaults), then the overrides in order.
pub fn load(
    path: Option<&Path>,
    overrides: &[Override],
) -> Result<(RunConfig, ConfigSource), ConfigError> {
    let source = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                location: Location {
                    file: p.display().to_string(),
                    line_col: None,
                },
                message: format!("cannot read the config file: {e}"),
            })?;
            ConfigSource {
                path: Some(p.to_owned()),
                text,
            }
        }
        None => ConfigSource::default(),
    };
    // The file alone first, so that its errors carry line and column.
    let from_file: RunConfig = toml::from_str(&source.text).map_err(|e| ConfigError {
        location: Location {
            file: source.file_name(),
            line_col: e.span().map(|s| line_col(&source.text, s.start)),
        },
        message: explain(e.message()),
    })?;
    let mut config = if overrides.is_empty() {
        from_file
    } else {
        let mut table: toml::Table = toml::from_str(&source.text).expect("parsed above");
        let mut config = None;
        // One override at a time, so that an error names the override that caused it.
        for o in overrides {
            let location = Location {
                file: format!("--set {}", o.key.join(".")),
                line_col: None,
            };
            o.apply(&mut table).map_err(|message| ConfigError {
                location: location.clone(),
                message,
            })?;
            config = Some(
                toml::Value::Table(table.clone())
                    .try_into::<RunConfig>()
                    .map_err(|e| ConfigError {
                        location,
                        message: explain(e.message()),
                    })?,
            );
        }
        config.expect("at least one override")
    };
    // Plugin paths are relative to the config file.
    if let Some(dir) = path.and_then(Path::parent) {
        for p in &mut config.plugins.paths {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
    Ok((config, source))
}

impl RunConfig {
    /// The resolved configuration as TOML, as written into the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot serialise the config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn unknown_key_names_line_column_and_nearest() {
        let f = write("name = \"x\"\n\n[train]\nepochs = 2\nepohcs = 3\n");
        let e = load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.location.line_col, Some((5, 1)), "{e}");
        assert!(
            e.message.contains("`epohcs`") && e.message.contains("did you mean `epochs`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_toml_has_line_and_column() {
        let f = write("name = \"x\"\n[train\nepochs = 2\n");
        let e = load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.location.line_col.map(|l| l.0), Some(2), "{e}");
    }

    #[test]
    fn overrides_apply_in_order_and_are_typed() {
        let f = write("[train]\nepochs = 2\n");
        let sets: Vec<Override> = [
            "train.epochs=7",
            "train.attack=pgd",
            "components.pgd.steps=3",
            "eval.epsilons=[\"1/255\"]",
        ]
        .iter()
        .map(|s| Override::parse(s).unwrap())
        .collect();
        let (c, _) = load(Some(f.path()), &sets).unwrap();
        assert_eq!(c.train.epochs, 7);
        assert_eq!(c.train.attack, "pgd");
        assert_eq!(c.components["pgd"]["steps"].as_integer(), Some(3));
        assert_eq!(c.eval.epsilons, vec![Epsilon(1.0 / 255.0)]);
        let bad = load(Some(f.path()), &[Override::parse("train.epoch=1").unwrap()]).unwrap_err();
        assert_eq!(bad.location.file, "--set train.epoch");
        assert!(bad.message.contains("did you mean `epochs`"), "{bad}");
    }

    #[test]
    fn override_keys_may_quote_segments() {
        let o = Override::parse("components.\"gradcam++\".layer=-2").unwrap();
        assert_eq!(o.key, vec!["components", "gradcam++", "layer"]);
        assert_eq!(o.value.as_integer(), Some(-2));
        let o = Override::parse("components.gradcam++.layer=1").unwrap();
        assert_eq!(o.key, vec!["components", "gradcam++", "layer"]);
        assert!(Override::parse("components.\"x.layer=1").is_err());
    }

    #[test]
    fn locates_component_keys() {
        let src = ConfigSource {
            path: Some("c.toml".into()),
            text: "[components.pgd]\nsteps = 3\nstepz = 4\n".into(),
        };
        assert_eq!(
            src.locate(&["components", "pgd", "stepz"]).to_string(),
            "c.toml:3:1"
        );
        assert_eq!(src.locate(&["components", "pgd"]).line_col, Some((1, 13)));
        assert_eq!(
            src.locate(&["components", "fgsm"]).file,
            "--set components.fgsm"
        );
    }

    #[test]
    fn resolved_config_round_trips() {
        let mut c = RunConfig::default();
        c.components
            .insert("pgd".into(), toml::from_str("steps = 3").unwrap());
        let back: RunConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.eval.epsilons, c.eval.epsilons);
        assert_eq!(back.components["pgd"]["steps"].as_integer(), Some(3));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::data::fuzz_cases(256),
            ..Default::default()
        })]
        /// Any config text and any `--set` text: a config or an error with a place.
        #[test]
        fn any_config_text_loads_cleanly(
            text in "(\\[[a-z.]{0,12}\\]|[a-z_.]{1,12} ?= ?(\"[^\"\n]{0,8}\"|[0-9./e+-]{1,6}|true|\\[[0-9, \"/]{0,10}\\])|\n|#.{0,5}|\\PC{0,3}){0,30}",
            set in "\\PC{0,40}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, &text).unwrap();
            let overrides: Vec<Override> = Override::parse(&set).into_iter().collect();
            if let Err(e) = load(Some(&path), &overrides) {
                let shown = e.to_string();
                proptest::prop_assert!(shown.contains("c.toml") || shown.starts_with("--set"), "{}", shown);
            }
        }
    }
}
