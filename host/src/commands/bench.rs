//! `sat-host bench`: training-step and evaluation throughput per training mode and
//! model, with the process's peak memory per row, as JSON and a Markdown table, on
//! generated 32 × 32 images or on the configuration's dataset (in memory or shards). The
//! training rows time the one [`TrainingStep`] that `run` uses.
//! `bench/pytorch_bench.py` measures the same rows in PyTorch eager for the ratio.
use super::{prepare, ConfigArgs, GlobalArgs};
use crate::config::RunConfig;
use crate::data::{rng::SplitMix, shapes, Data};
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::{create_attack, Pipeline};
use crate::plugins::registry::Registry;
use crate::report::write_atomic;
use crate::train::step::{StepAt, TrainingStep};
use crate::train::{build_network, checkpoint::save_checkpoint, mixed_precision, Network};
use anyhow::Context;
use clap::Args;
use sat_core::{OracleAdapter, Phase};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `sat-host bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The configuration and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Architectures, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "small-cnn,preact-resnet18"
    )]
    pub models: Vec<String>,
    /// Rows, comma-separated (default: the training rows, eval-pgd-20 and eval-apgd-ce;
    /// the other evaluation rows of [`ROWS`] on request).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "standard,sat-masks,sat-gradient,fgsm-rs,pgd-7,trades-10,rrr-masks,input-gradient,fgsm-gradalign,eval-pgd-20,eval-apgd-ce"
    )]
    pub rows: Vec<String>,
    /// Batch size (1 to 65 536).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(i64).range(1..=65_536))]
    pub batch: i64,
    /// Untimed steps per row (0 to 10 000).
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10_000))]
    pub warmup: usize,
    /// Timed steps per row (1 to 100 000).
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub steps: usize,
    /// Write the rows as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Measures the rows and prints them as a Markdown table.
pub fn run(global: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let (config, registry) = prepare(global, &args.config, &[])?;
    let device = crate::device::open(&config)?;
    let plan = Plan {
        models: args.models.clone(),
        rows: args.rows.clone(),
        batch: args.batch,
        warmup: args.warmup,
        steps: args.steps.max(1),
    };
    log::info!(
        "bench on {device:?}, {} libtorch threads, batch {}",
        tch::get_num_threads(),
        plan.batch
    );
    let rows = measure(&config, &registry, &plan, device)?;
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
    }
    print!("{}", markdown(&rows));
    Ok(ExitCode::SUCCESS)
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Model architecture.
    pub model: String,
    /// What is measured: a training mode, or `eval <attack>`.
    pub row: String,
    /// Images per second over the timed steps.
    pub images_per_sec: f64,
    /// Seconds per step (one batch).
    pub seconds_per_step: f64,
    /// Peak resident memory of the process during the row, MiB (Linux).
    pub peak_rss_mib: f64,
    /// The device, as libtorch names it (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// Training forward passes under float16 autocast with loss scaling (CUDA only).
    pub amp: bool,
    /// Batch size.
    pub batch: i64,
    /// cuDNN benchmark mode (CUDA only).
    pub cudnn_benchmark: bool,
}

/// What to measure.
pub struct Plan {
    /// Architectures (`[model] arch`), each at `[model] width`.
    pub models: Vec<String>,
    /// Rows (names from [`ROWS`]).
    pub rows: Vec<String>,
    /// Batch size.
    pub batch: i64,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// The rows `sat-host bench` knows: `(name, saliency, attack, objective, attack settings)`.
pub const ROWS: [RowSpec; 19] = [
    ("standard", "", "", "ce", ""),
    ("sat-masks", "masks", "sat", "ce", ""),
    ("sat-gradient", "guided-backprop", "sat", "ce", ""),
    ("fgsm-rs", "", "fgsm-rs", "ce", ""),
    ("pgd-7", "", "pgd", "ce", "steps = 7"),
    ("trades-10", "", "trades", "trades", "steps = 10"),
    ("rrr-masks", "masks", "", "rrr", ""),
    ("input-gradient", "", "", "input-gradient", ""),
    ("fgsm-gradalign", "", "fgsm", "gradalign", ""),
    ("eval-pgd-20", "", "pgd", "ce", "steps = 20"),
    ("eval-apgd-ce", "", "apgd-ce", "ce", "steps = 20"),
    (
        "eval-pgd-20-targeted",
        "",
        "pgd",
        "ce",
        "steps = 20\ntarget = \"random\"",
    ),
    ("eval-apgd-dlr", "", "apgd-dlr", "ce", "steps = 20"),
    ("eval-apgd-t", "", "apgd-t", "ce", "steps = 20"),
    ("eval-fab", "", "fab", "ce", "steps = 20"),
    ("eval-fab-t", "", "fab-t", "ce", "steps = 20"),
    ("eval-square", "", "square", "ce", "queries = 100"),
    (
        "eval-cw-l2",
        "",
        "cw-l2",
        "ce",
        "steps = 20\nbinary_search_steps = 1",
    ),
    (
        "eval-autoattack",
        "",
        "autoattack",
        "ce",
        "steps = 20\nqueries = 100",
    ),
];

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, MiB.
fn peak_mib() -> f64 {
    crate::report::process_status_mib("VmHWM")
}

/// A row of [`ROWS`]: `(name, saliency, attack, objective, attack settings)`.
type RowSpec = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Measures every (model, row) of `plan`.
pub fn measure(
    base: &RunConfig,
    registry: &Registry,
    plan: &Plan,
    device: Device,
) -> anyhow::Result<Vec<Row>> {
    // Generated 32 × 32 `shapes` images, or the configuration's own training split
    // (in memory or streamed from shards) at its `image_size`.
    let (data, size) = if base.data.dataset == "shapes" {
        let count = plan.batch as usize * (plan.warmup + plan.steps);
        let generated = shapes::generate(count, 32, 6, base.seed, 0).map_err(anyhow::Error::msg)?;
        (Data::Memory(generated), 32)
    } else {
        let (train, _) = crate::train::load_datasets(base)?;
        (train, base.data.image_size)
    };
    let bench = Bench {
        base,
        registry,
        plan,
        device,
        classes: data.num_classes(),
        data,
        size,
        teacher_dir: tempfile_dir()?,
    };
    let mut out = Vec::new();
    for arch in &plan.models {
        for name in &plan.rows {
            let Some(spec) = ROWS.iter().find(|r| r.0 == name.as_str()) else {
                anyhow::bail!(
                    "unknown bench row `{name}`; rows: {}",
                    ROWS.map(|r| r.0).join(", ")
                );
            };
            out.push(bench.row(arch, spec)?);
        }
    }
    let _ = std::fs::remove_dir_all(&bench.teacher_dir);
    Ok(out)
}

/// What every row shares.
struct Bench<'a> {
    base: &'a RunConfig,
    registry: &'a Registry,
    plan: &'a Plan,
    device: Device,
    data: Data,
    classes: i64,
    /// Side of the images.
    size: i64,
    teacher_dir: PathBuf,
}

impl Bench<'_> {
    /// The config of row `spec` for `arch`, and its network.
    fn setup(&self, arch: &str, spec: &RowSpec) -> anyhow::Result<(RunConfig, Network)> {
        let &(_, saliency, attack, objective, settings) = spec;
        let mut config = self.base.clone();
        config.model.arch = arch.to_string();
        config.data.image_size = self.size;
        config.train.saliency = if saliency.is_empty() {
            Vec::new()
        } else {
            vec![saliency.to_string()]
        };
        config.train.attack = attack.to_string();
        config.train.mix = String::new();
        config.train.objective = objective.to_string();
        let net = build_network(&config, self.classes, self.device)?;
        if saliency == "guided-backprop" {
            // The teacher: a model of the same architecture (its weights do not
            // change the cost).
            let path = self.teacher_dir.join(format!("{arch}.safetensors"));
            save_checkpoint(&net.vs, &path)?;
            let mut table = toml::Table::new();
            table.insert("teacher".into(), path.display().to_string().into());
            table.insert("arch".into(), arch.into());
            table.insert("width".into(), config.model.width.into());
            config.components.insert(saliency.into(), table);
        }
        if !attack.is_empty() {
            let table: toml::Table = toml::from_str(settings).context("row settings")?;
            config.components.insert(attack.into(), table);
        }
        Ok((config, net))
    }

    /// Measures row `spec` for `arch`.
    /// The `i`-th batch of the bench data (wrapping around it), on the device.
    fn batch(&self, i: usize) -> anyhow::Result<crate::data::Samples> {
        let batch = self.plan.batch;
        let index = Tensor::arange_start(
            i as i64 * batch,
            (i as i64 + 1) * batch,
            (Kind::Int64, Device::Cpu),
        )
        .remainder(self.data.len());
        Ok(self.data.select(&index)?.to(self.device))
    }

    fn row(&self, arch: &str, spec: &RowSpec) -> anyhow::Result<Row> {
        let (config, net) = self.setup(arch, spec)?;
        let (row, attack) = (spec.0, spec.2);
        let eval_row = row.starts_with("eval-");
        let mut pipeline = if eval_row {
            let attack = create_attack(self.registry, &config, attack)?;
            Pipeline::new(self.registry, &config, Some(attack))?
        } else {
            Pipeline::for_training(self.registry, &config)?
        };
        let amp = mixed_precision(&self.base.train, self.device);
        let mut step = TrainingStep::single_process(&net.vs, &config.train, amp);
        let adapter = OracleAdapter(ModelOracle {
            model: net.model.as_ref(),
            classes: self.classes as u32,
        });
        let oracle = adapter.as_ref();
        let mut rng = SplitMix::new(self.base.seed, 7);
        let (plan, device) = (self.plan, self.device);
        reset_peak();
        let mut timed = 0.0;
        for i in 0..plan.warmup + plan.steps {
            let samples = self.batch(i)?;
            synchronize(device);
            let start = Instant::now();
            if eval_row {
                let inputs = pipeline
                    .inputs(&samples, 0, 1, Phase::Evaluation, &oracle, &mut rng)?
                    .images;
                let _ = tch::no_grad(|| net.model.forward_t(&inputs, false))
                    .argmax(-1, false)
                    .sum(Kind::Int64)
                    .int64_value(&[]);
            } else {
                let at = StepAt {
                    epoch: 0,
                    epochs: 1,
                    global_step: i as u64,
                    lr: config.train.lr,
                };
                step.run(
                    net.model.as_ref(),
                    &mut pipeline,
                    &samples,
                    at,
                    &oracle,
                    &mut rng,
                )?;
            }
            synchronize(device);
            if i >= plan.warmup {
                timed += start.elapsed().as_secs_f64();
            }
        }
        let r = Row {
            model: arch.to_string(),
            row: row.into(),
            images_per_sec: (plan.steps as i64 * plan.batch) as f64 / timed,
            seconds_per_step: timed / plan.steps as f64,
            peak_rss_mib: peak_mib(),
            device: format!("{device:?}"),
            amp,
            batch: plan.batch,
            cudnn_benchmark: device.is_cuda() && self.base.cudnn_benchmark,
        };
        log::info!(
            "{} {}: {:.1} images/s, {:.3} s/step, peak RSS {:.0} MiB",
            r.model,
            r.row,
            r.images_per_sec,
            r.seconds_per_step,
            r.peak_rss_mib
        );
        Ok(r)
    }
}

/// Waits for the CUDA device's queued work (nothing on the CPU).
fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s =
        String::from("| model | row | images/s | s/step | peak RSS MiB |\n|---|---|---|---|---|\n");
    for r in rows {
        s += &format!(
            "| {} | {} | {:.1} | {:.3} | {:.0} |\n",
            r.model, r.row, r.images_per_sec, r.seconds_per_step, r.peak_rss_mib
        );
    }
    s
}
