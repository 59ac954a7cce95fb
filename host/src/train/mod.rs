//! Training: the one training step ([`step`]), the epoch loop (`epochs.rs`), what a run
//! keeps on disk ([`checkpoint`]), the optimiser and the learning-rate schedule, and
//! [`run`], which records how a run ended, panics included ([`fault`]).
#[cfg(test)]
mod accepted_configs;
pub mod checkpoint;
mod epochs;
pub mod fault;
pub mod optimizer;
pub mod schedule;
pub mod step;

use crate::config::{RunConfig, TrainConfig};
use crate::data::rng::{torch_seed, Purpose};
use crate::data::Data;
use crate::distributed::Ranks;
use crate::plugins::registry::Registry;
use crate::report::{Metrics, RunDir, RunStatus};
use anyhow::Context;
use std::sync::atomic::AtomicBool;
use tch::{nn, nn::ModuleT, Device, Tensor};

/// The training and test sets of `config`.
pub fn load_datasets(config: &RunConfig) -> anyhow::Result<(Data, Data)> {
    crate::data::load(&config.data, config.seed)
        .with_context(|| format!("loading dataset `{}`", config.data.dataset))
}

/// A model and its variables.
pub struct Network {
    /// Variables (parameters and buffers).
    pub vs: nn::VarStore,
    /// The module.
    pub model: Box<dyn ModuleT>,
}

/// Builds the model of `config` for `classes` on `device`, initialised from the seed's
/// initialisation stream (or loaded from `[model] torchscript`), and checks it on one
/// batch. Its BatchNorm layers use their local batch (see [`build_network_for`]).
pub fn build_network(config: &RunConfig, classes: i64, device: Device) -> anyhow::Result<Network> {
    build_network_with(config, classes, device, &sat_models::BatchStats::local())
}

/// [`build_network`] for training on `ranks`: with `[train] sync_batchnorm` in a
/// data-parallel run, the BatchNorm layers take their training-mode batch statistics
/// over every rank's batch, through a differentiable all-reduce on a process group of
/// its own that every rank joins here. In one process the key changes nothing (logged).
pub fn build_network_for(
    config: &RunConfig,
    classes: i64,
    device: Device,
    ranks: &Ranks,
) -> anyhow::Result<Network> {
    let stats = batch_stats(config, ranks)?;
    build_network_with(config, classes, device, &stats)
}

/// Where the BatchNorm layers of a training run take their batch statistics from.
fn batch_stats(config: &RunConfig, ranks: &Ranks) -> anyhow::Result<sat_models::BatchStats> {
    if !config.train.sync_batchnorm {
        return Ok(sat_models::BatchStats::local());
    }
    let Some(group) = ranks.process_group() else {
        log::info!("[train] sync_batchnorm: one process, whose batch is the global batch: nothing to synchronise");
        return Ok(sat_models::BatchStats::local());
    };
    let sum = std::sync::Arc::new(group.differentiable_sum().with_context(|| {
        "[train] sync_batchnorm: joining the process group of the BatchNorm statistics"
    })?);
    log::info!(
        "[train] sync_batchnorm: BatchNorm statistics over the {} ranks' batches (a global batch of {})",
        ranks.world_size(),
        ranks.world_size() * config.train.batch_size
    );
    // A failed sum (a rank died or stalled) can only unwind out of the forward pass, as
    // a failing libtorch operation does; the run then fails with this message.
    Ok(sat_models::BatchStats::synchronised(std::sync::Arc::new(
        move |t: &Tensor| match sum.all_reduce(t) {
            Ok(total) => total,
            Err(e) => panic!("synchronised BatchNorm: {e}"),
        },
    )))
}

fn build_network_with(
    config: &RunConfig,
    classes: i64,
    device: Device,
    stats: &sat_models::BatchStats,
) -> anyhow::Result<Network> {
    tch::manual_seed(torch_seed(config.seed, Purpose::Initialisation, 0));
    let vs = nn::VarStore::new(device);
    let m = &config.model;
    let model: Box<dyn ModuleT> = match &m.torchscript {
        Some(path) => Box::new(
            sat_models::TorchScriptModel::load(path, device)
                .map_err(|e| anyhow::anyhow!("[model] torchscript: {e}"))?,
        ),
        None => sat_models::build_with(&vs.root(), &m.arch, m.width, classes, stats)
            .map_err(model_error)?,
    };
    let model: Box<dyn ModuleT> = if m.mean.is_empty() && m.std.is_empty() {
        model
    } else {
        Box::new(
            sat_models::Normalized::new(model, &m.mean, &m.std, device)
                .map_err(|e| anyhow::anyhow!("[model] mean/std: {e}"))?,
        )
    };
    let which = match &m.torchscript {
        Some(path) => format!("TorchScript model {}", path.display()),
        None => format!("model arch `{}`", m.arch),
    };
    sat_models::probe(model.as_ref(), config.data.image_size, classes, device)
        .map_err(|e| anyhow::anyhow!("[model] {e} ({which})"))?;
    // Training, attacks and the alignment take gradients through the model.
    let needs_gradient =
        m.torchscript.is_none() || !config.eval.attacks.is_empty() || config.eval.alignment;
    if needs_gradient {
        sat_models::probe_gradient(model.as_ref(), config.data.image_size, classes, device)
            .map_err(|e| anyhow::anyhow!("[model] {e} ({which})"))?;
    }
    let model: Box<dyn ModuleT> = match m.torchscript {
        Some(_) => Box::new(Named {
            inner: model,
            which,
        }),
        None => model,
    };
    Ok(Network { vs, model })
}

/// Why `[model]` could not be built, naming the key.
fn model_error(e: sat_models::ModelError) -> anyhow::Error {
    match e {
        sat_models::ModelError::UnknownArch(arch) => anyhow::anyhow!(
            "[model] arch: unknown model arch `{arch}`{}; accepted: {}",
            crate::config::suggest::did_you_mean(&arch, sat_models::ARCHITECTURES),
            sat_models::ARCHITECTURES.join(", ")
        ),
        other => anyhow::anyhow!("[model] {other}"),
    }
}

/// A loaded model whose failures name it: an unwind out of its forward pass (a
/// TorchScript error, raised without printing by `sat_models`) carries `(which)`, so
/// whoever catches it reports one line naming the model file.
#[derive(Debug)]
struct Named {
    inner: Box<dyn ModuleT>,
    which: String,
}

impl ModuleT for Named {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let forward = std::panic::AssertUnwindSafe(|| self.inner.forward_t(x, train));
        match std::panic::catch_unwind(forward) {
            Ok(t) => t,
            Err(payload) => std::panic::resume_unwind(Box::new(format!(
                "{} ({})",
                fault::payload_message(payload.as_ref()),
                self.which
            ))),
        }
    }
}

/// Whether training uses mixed precision (float16 autocast of the training forward
/// passes with dynamic loss scaling): `[train] amp` on a CUDA device; on the CPU it is
/// ignored with a warning.
pub fn mixed_precision(t: &TrainConfig, device: Device) -> bool {
    let amp = t.amp && device.is_cuda();
    if t.amp && !amp {
        log::warn!(
            "[train] amp: mixed precision is used on CUDA only; training in float32 on {device:?}"
        );
    }
    amp
}

/// What ended a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs and the evaluation ran.
    Completed,
    /// Ctrl-C or SIGTERM; the last finished epoch's checkpoint is kept.
    Interrupted,
}

/// Trains, checkpoints and evaluates the run described by `config` into `run`. With
/// `resume`, training continues from the run directory's state file.
///
/// An error or a panic (see [`fault`]) ends the run with status `failed`: the message
/// goes to `metrics.json` (which keeps the finished epochs) and `log.txt`, and the
/// checkpoint of the last finished epoch stays as it was, so `--resume` continues.
///
/// With several `ranks` (a data-parallel run, see [`crate::distributed`]) every rank
/// calls this; only rank 0 writes into `run`.
pub fn run(
    config: &RunConfig,
    registry: &Registry,
    run: &RunDir,
    device: Device,
    interrupted: &AtomicBool,
    resume: bool,
    ranks: &Ranks,
) -> anyhow::Result<(Outcome, Metrics)> {
    let mut metrics = Metrics {
        world_size: ranks.world_size(),
        ..Metrics::default()
    };
    if resume {
        // Keep the figures of the finished epochs; stored figures are input too: each
        // is checked, and the state file is cross-checked against them.
        let path = run.file("metrics.json");
        if path.exists() {
            metrics.epochs = Metrics::read(&path)?.epochs;
        }
    }
    let run_dir = run;
    let result = fault::catch_panics(|| {
        let mut session = epochs::Session {
            config,
            registry,
            run: run_dir,
            device,
            interrupted,
            metrics: &mut metrics,
            ranks,
        };
        session.train_and_evaluate(resume)
    });
    match result {
        Ok(outcome) => Ok((outcome, metrics)),
        Err(e) if crate::interrupt::is_interrupted(&e) => {
            // Stopped during the evaluation: every epoch is recorded; `--resume` (or
            // `sat-host eval --run`) evaluates again.
            log::warn!(
                "evaluation {e}; all {} epochs are kept, --resume evaluates again",
                metrics.epochs.len()
            );
            metrics.status = RunStatus::Interrupted;
            crate::interrupt::exclusive(|| run.write_metrics(&metrics))?;
            Ok((Outcome::Interrupted, metrics))
        }
        Err(e) if checkpoint::is_refused(&e) || epochs::is_refused_resume(&e) => {
            // The stored state was refused before any training: the run directory keeps
            // the status it had.
            Err(e)
        }
        Err(e) => {
            log::error!(
                "the run failed after {} finished epoch(s): {e:#}",
                metrics.epochs.len()
            );
            metrics.status = RunStatus::Failed;
            metrics.error = Some(format!("{e:#}"));
            if ranks.is_writer() {
                if let Err(write) = crate::interrupt::exclusive(|| run.write_metrics(&metrics)) {
                    log::error!("cannot record the failure in metrics.json: {write}");
                }
            }
            log::logger().flush();
            Err(e)
        }
    }
}
