//! `sat-host bench`: training-step and evaluation throughput per training mode and
//! model, with the process's peak memory per row, as JSON and a Markdown table.
//! `bench/pytorch_bench.py` measures the same rows in PyTorch eager for the ratio.
use crate::config::{LossKind, RunConfig};
use crate::data::{rng::SplitMix, shapes};
use crate::optimizer::{LossScale, Optimizer, Rule};
use crate::oracle::ModelOracle;
use crate::pipeline::{create_attack, Pipeline};
use crate::registry::Registry;
use crate::train::{build_network, training_loss};
use anyhow::Context;
use sat_core::{OracleAdapter, Phase};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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

/// The rows `sat-host bench` knows: `(name, saliency, attack, loss, component settings)`.
pub const ROWS: [(&str, &str, &str, LossKind, &str); 8] = [
    ("standard", "", "", LossKind::Ce, ""),
    ("sat-masks", "masks", "sat", LossKind::Ce, ""),
    ("sat-gradient", "guided-backprop", "sat", LossKind::Ce, ""),
    ("fgsm-rs", "", "fgsm-rs", LossKind::Ce, ""),
    ("pgd-7", "", "pgd", LossKind::Ce, "steps = 7"),
    ("trades-10", "", "trades", LossKind::Trades, "steps = 10"),
    ("eval-pgd-20", "", "pgd", LossKind::Ce, "steps = 20"),
    ("eval-apgd-ce", "", "apgd-ce", LossKind::Ce, "steps = 20"),
];

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory since the last reset, MiB.
fn peak_mib() -> f64 {
    crate::report::process_status_mib("VmHWM")
}

/// Measures every (model, row) of `plan`.
pub fn run(
    base: &RunConfig,
    registry: &Registry,
    plan: &Plan,
    device: Device,
) -> anyhow::Result<Vec<Row>> {
    let mut out = Vec::new();
    let classes = 6;
    let count = plan.batch as usize * (plan.warmup + plan.steps);
    let data = shapes::generate(count, 32, classes, base.seed, 0).map_err(anyhow::Error::msg)?;
    let teacher_dir = tempfile_dir()?;
    let amp = crate::train::mixed_precision(&base.train, device);
    for arch in &plan.models {
        for name in &plan.rows {
            let Some(&(row, saliency, attack, loss, settings)) =
                ROWS.iter().find(|r| r.0 == name.as_str())
            else {
                anyhow::bail!(
                    "unknown bench row `{name}`; rows: {}",
                    ROWS.map(|r| r.0).join(", ")
                );
            };
            let mut config = base.clone();
            config.model.arch = arch.clone();
            config.data.image_size = 32;
            config.train.saliency = if saliency.is_empty() {
                Vec::new()
            } else {
                vec![saliency.to_string()]
            };
            config.train.attack = String::new();
            config.train.mix = String::new();
            config.train.loss = loss;
            let net = build_network(&config, classes, device)?;
            if saliency == "guided-backprop" {
                // The teacher: a model of the same architecture (its weights do not
                // change the cost).
                let path = teacher_dir.join(format!("{arch}.safetensors"));
                crate::train::save_checkpoint(&net.vs, &path)?;
                let mut table = toml::Table::new();
                table.insert("teacher".into(), path.display().to_string().into());
                table.insert("arch".into(), arch.clone().into());
                table.insert("width".into(), config.model.width.into());
                config.components.insert(saliency.into(), table);
            }
            if !attack.is_empty() {
                let table: toml::Table = toml::from_str(settings).context("row settings")?;
                config.components.insert(attack.into(), table);
            }
            let attack_component = if attack.is_empty() {
                None
            } else {
                Some(create_attack(registry, &config, attack)?)
            };
            let mut pipeline = Pipeline::new(registry, &config, attack_component)?;
            let mut optimizer = Optimizer::new(&net.vs, Rule::from_config(&config.train));
            let mut scaler = LossScale::default();
            let adapter = OracleAdapter(ModelOracle {
                model: net.model.as_ref(),
                classes: classes as u32,
            });
            let oracle = adapter.as_ref();
            let mut rng = SplitMix::new(base.seed, 7);
            let eval_row = row.starts_with("eval-");
            reset_peak();
            let mut timed = 0.0;
            for i in 0..plan.warmup + plan.steps {
                let index = Tensor::arange_start(
                    i as i64 * plan.batch,
                    (i as i64 + 1) * plan.batch,
                    (Kind::Int64, Device::Cpu),
                );
                let samples = data.select(&index).to(device);
                if let Device::Cuda(index) = device {
                    tch::Cuda::synchronize(index as i64);
                }
                let start = Instant::now();
                let phase = if eval_row {
                    Phase::Evaluation
                } else {
                    Phase::Training
                };
                let inputs = pipeline.inputs(&samples, 0, 1, phase, &oracle, &mut rng)?;
                if eval_row {
                    let _ = tch::no_grad(|| net.model.forward_t(&inputs, false))
                        .argmax(-1, false)
                        .sum(Kind::Int64)
                        .int64_value(&[]);
                } else {
                    let (loss, _) = training_loss(
                        net.model.as_ref(),
                        &inputs,
                        &samples,
                        loss,
                        config.train.trades_beta,
                        amp,
                    )?;
                    optimizer.backward_step_with(
                        &loss,
                        config.train.lr,
                        amp.then_some(&mut scaler),
                    );
                    let _ = loss.double_value(&[]);
                }
                if let Device::Cuda(index) = device {
                    tch::Cuda::synchronize(index as i64);
                }
                if i >= plan.warmup {
                    timed += start.elapsed().as_secs_f64();
                }
            }
            let r = Row {
                model: arch.clone(),
                row: row.into(),
                images_per_sec: (plan.steps as i64 * plan.batch) as f64 / timed,
                seconds_per_step: timed / plan.steps as f64,
                peak_rss_mib: peak_mib(),
                device: format!("{device:?}"),
                amp,
                batch: plan.batch,
                cudnn_benchmark: device.is_cuda() && base.cudnn_benchmark,
            };
            log::info!(
                "{} {}: {:.1} images/s, {:.3} s/step, peak RSS {:.0} MiB",
                r.model,
                r.row,
                r.images_per_sec,
                r.seconds_per_step,
                r.peak_rss_mib
            );
            out.push(r);
        }
    }
    let _ = std::fs::remove_dir_all(&teacher_dir);
    Ok(out)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
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
