//! Run configuration: the schema (plain serde structs whose `Default` is the one source
//! of defaults), and in [`load`] the TOML file and `--set key=value` overrides, with
//! errors that name the file, line, column and key. The configuration imports no other
//! host module: every type a key takes is defined here.
mod load;
pub mod suggest;
pub mod validate;

pub use load::{load, ConfigError, ConfigSource, Location, Override};
use sat_core::Epsilon;
pub use sat_data::config::{Cifar100Labels, DataConfig, MissingMasks};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
pub use validate::{check_run_name, validate};

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
    /// What the run directory records besides metrics and checkpoints.
    pub report: ReportConfig,
    /// Data-parallel training across processes (used when launched by torchrun or Slurm).
    pub distributed: DistributedConfig,
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
            report: ReportConfig::default(),
            distributed: DistributedConfig::default(),
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

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `"small-cnn"`, `"resnet10"`, `"resnet18"`, `"resnet34"`, `"resnet50"` (ImageNet
    /// stem, bottlenecks), `"preact-resnet18"` or
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

/// `[train] schedule`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// The base rate times `gamma` for every milestone epoch passed.
    Multistep,
    /// Cosine annealing from the base rate to 0 over the run, per step.
    Cosine,
    /// `torch.optim.lr_scheduler.OneCycleLR` with its defaults: cosine warm-up over the
    /// first 30 % of steps from `lr / 25` to `lr`, then cosine annealing to `lr / 25e4`.
    OneCycle,
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
    pub schedule: ScheduleKind,
    /// Epochs after which `multistep` multiplies the rate by `gamma`.
    pub milestones: Vec<u32>,
    /// Factor of `multistep`.
    pub gamma: f64,
    /// Mixed precision (float16 autocast with dynamic loss scaling) on CUDA; ignored,
    /// with a warning, on the CPU.
    pub amp: bool,
    /// Synchronised BatchNorm in a data-parallel run: training-mode batch statistics over
    /// the global batch (every rank's), as `torch.nn.SyncBatchNorm`; a no-op in one
    /// process. Not for a TorchScript model. See docs/SCALING.md.
    pub sync_batchnorm: bool,
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
    /// The training objective, an objective component (`ce`, `trades`, `rrr`,
    /// `input-gradient`, `gradalign` or a plugin's), configured in `[components.<name>]`.
    pub objective: String,
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
            schedule: ScheduleKind::Constant,
            milestones: Vec::new(),
            gamma: 0.1,
            amp: false,
            sync_batchnorm: false,
            saliency: Vec::new(),
            saliency_weights: Vec::new(),
            saliency_draw: SaliencyDraw::Batch,
            attack: String::new(),
            mix: String::new(),
            mix_probability: 0.5,
            objective: "ce".into(),
        }
    }
}

/// `[distributed]`: how the processes of a data-parallel run talk to each other. Read only
/// when the run is launched by torchrun or Slurm (`RANK`/`WORLD_SIZE` or `SLURM_PROCID`/
/// `SLURM_NTASKS` > 1 in the environment); a plain run is one process and ignores it.
/// See docs/SCALING.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// The c10d backend: `"auto"` (NCCL when the device is CUDA, Gloo on the CPU),
    /// `"gloo"` (CPU tensors) or `"nccl"` (CUDA tensors).
    pub backend: String,
    /// Seconds any rendezvous or collective may wait for the other ranks (1 to 86400):
    /// a rank that died, hangs or never started makes the others fail after at most
    /// this long, naming it, instead of waiting for ever. It must exceed the longest
    /// stretch one rank works alone: rank 0's checkpoint writes and its share of the
    /// evaluation.
    pub timeout_seconds: u64,
    /// Overlap the gradient all-reduce with the backward pass (`true`, the default):
    /// buckets of the flat gradient are all-reduced from autograd hooks as soon as their
    /// gradients are accumulated, as torch DDP does. `false`: one all-reduce of the whole
    /// flat gradient after backward. Both give the same weights (identical bits on two
    /// ranks). See docs/SCALING.md.
    pub overlap: bool,
    /// Most megabytes (MiB, 2^20 bytes) of gradient in one overlapped all-reduce (torch
    /// DDP's `bucket_cap_mb`, default 25); the first bucket holds at most 1 MiB, as DDP's.
    pub bucket_mb: f64,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            backend: "auto".into(),
            timeout_seconds: 300,
            overlap: true,
            bucket_mb: 25.0,
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

/// `[report]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// TensorBoard event files in the run directory (`events.out.tfevents.*`, a new one
    /// per process start; rank 0 alone writes): per-epoch training figures and the
    /// evaluation as scalars, for `tensorboard --logdir runs`.
    pub tensorboard: bool,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { tensorboard: true }
    }
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

    #[test]
    fn resolved_config_round_trips() {
        let mut c = RunConfig::default();
        c.components
            .insert("pgd".into(), toml::from_str("steps = 3").unwrap());
        let back: RunConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.eval.epsilons, c.eval.epsilons);
        assert_eq!(back.components["pgd"]["steps"].as_integer(), Some(3));
    }

    #[test]
    fn report_keys_default_and_unknown_ones_are_refused_where_they_stand() {
        assert!(RunConfig::default().report.tensorboard);
        let resolved = RunConfig::default().to_toml();
        assert!(
            resolved.contains("[report]\ntensorboard = true"),
            "{resolved}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[report]\ntensorboard = false\n").unwrap();
        assert!(!load(Some(&path), &[]).unwrap().0.report.tensorboard);
        let set = Override::parse("report.tensorboard=false").unwrap();
        assert!(!load(None, &[set]).unwrap().0.report.tensorboard);
        std::fs::write(&path, "seed = 1\n[report]\ntensorbord = false\n").unwrap();
        let e = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(
            e.contains("c.toml:3:1: unknown key `tensorbord`; did you mean `tensorboard`?"),
            "{e}"
        );
        std::fs::write(&path, "[report]\ntensorboard = 1\n").unwrap();
        let e = load(Some(&path), &[]).unwrap_err().to_string();
        assert!(e.contains("c.toml:2:") && e.contains("bool"), "{e}");
    }
}
