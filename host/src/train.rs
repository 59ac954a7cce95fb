//! The training loop: data order and augmentation from the run's seed, inputs from the
//! pipeline, a checkpoint after every epoch, clean stop on Ctrl-C or a non-finite loss.
use crate::config::{LossKind, RunConfig, TrainConfig};
use crate::data::{augment, rng::SplitMix, Dataset};
use crate::eval;
use crate::optimizer::{LossScale, Optimizer, Rule};
use crate::oracle::ModelOracle;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::report::{temporary_sibling, EpochMetrics, Metrics, RunDir};
use crate::schedule::Schedule;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sat_core::{OracleAdapter, Phase};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// The training and test sets of `config`.
pub fn load_datasets(config: &RunConfig) -> anyhow::Result<(Dataset, Dataset)> {
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

/// Builds the model of `config` for `classes` on `device`, initialised from the seed
/// (or loaded from `[model] torchscript`), and checks it on one batch.
pub fn build_network(config: &RunConfig, classes: i64, device: Device) -> anyhow::Result<Network> {
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(device);
    let m = &config.model;
    let model: Box<dyn ModuleT> = match &m.torchscript {
        Some(path) => Box::new(
            sat_models::TorchScriptModel::load(path, device)
                .map_err(|e| anyhow::anyhow!("[model] torchscript: {e}"))?,
        ),
        None => sat_models::build(&vs.root(), &m.arch, m.width, classes).map_err(|e| match e {
            sat_models::ModelError::UnknownArch(arch) => anyhow::anyhow!(
                "[model] arch: unknown model arch `{arch}`{}; accepted: {}",
                crate::suggest::did_you_mean(&arch, sat_models::ARCHITECTURES),
                sat_models::ARCHITECTURES.join(", ")
            ),
            other => anyhow::anyhow!("[model] {other}"),
        })?,
    };
    let model: Box<dyn ModuleT> = if m.mean.is_empty() && m.std.is_empty() {
        model
    } else {
        Box::new(
            sat_models::Normalized::new(model, &m.mean, &m.std, device)
                .map_err(|e| anyhow::anyhow!("[model] mean/std: {e}"))?,
        )
    };
    sat_models::probe(model.as_ref(), config.data.image_size, classes, device)
        .map_err(|e| anyhow::anyhow!("[model] {e}"))?;
    Ok(Network { vs, model })
}

/// Writes named tensors to `path` atomically (safetensors, temporary file + rename).
fn write_tensors(named: &[(String, Tensor)], path: &Path) -> anyhow::Result<()> {
    let tmp = temporary_sibling(path);
    let cpu: Vec<(String, Tensor)> = named
        .iter()
        .map(|(k, t)| (k.clone(), t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&cpu, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving {} into place", path.display()))
}

fn model_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Saves the model's variables to `path` atomically (safetensors).
pub fn save_checkpoint(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    write_tensors(&model_tensors(vs), path)
}

/// Reads a safetensors file into a map, naming the file on failure.
fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// Copies the tensors of `named` (keys `prefix` + variable name) into `vs`; every
/// variable must be present with its shape.
fn copy_into(
    vs: &mut nn::VarStore,
    named: &HashMap<String, Tensor>,
    prefix: &str,
    file: &Path,
) -> anyhow::Result<()> {
    let variables = vs.variables();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, var) in &variables {
            let key = format!("{prefix}{name}");
            let src = named.get(&key).with_context(|| {
                format!(
                    "{} has no tensor `{key}`: it was written for another model",
                    file.display()
                )
            })?;
            if src.size() != var.size() {
                bail!(
                    "{}: `{key}` has shape {:?}, the model's variable {:?} (another [model] arch or width?)",
                    file.display(),
                    src.size(),
                    var.size()
                );
            }
            var.shallow_clone().copy_(src);
        }
        Ok(())
    })
}

/// Loads model weights written by [`save_checkpoint`] into `vs`.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let named = read_tensors(path)?;
    copy_into(vs, &named, "", path)
}

/// The trainer's state after a finished epoch: model, optimiser and epoch, in one file
/// written atomically, so a resumed run continues exactly.
const STATE_FILE: &str = "state.safetensors";

fn save_state(
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    scaler: &LossScale,
    epochs_done: u32,
    path: &Path,
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = model_tensors(vs)
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    named.extend(optimizer.state());
    named.push((
        "trainer.epochs_done".into(),
        Tensor::from_slice(&[epochs_done as i64]),
    ));
    named.push(("amp.scale".into(), Tensor::from_slice(&[scaler.scale])));
    named.push((
        "amp.good_steps".into(),
        Tensor::from_slice(&[scaler.good_steps as i64]),
    ));
    write_tensors(&named, path)
}

/// Restores model and optimiser from the state file; returns the finished epochs.
fn load_state(
    vs: &mut nn::VarStore,
    optimizer: &mut Optimizer,
    scaler: &mut LossScale,
    path: &Path,
) -> anyhow::Result<u32> {
    let named = read_tensors(path)?;
    copy_into(vs, &named, "model.", path)?;
    optimizer
        .load_state(&named)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let (Some(scale), Some(good)) = (named.get("amp.scale"), named.get("amp.good_steps")) {
        scaler.scale = scale.double_value(&[0]);
        scaler.good_steps = good.int64_value(&[0]) as u32;
    }
    let done = named
        .get("trainer.epochs_done")
        .with_context(|| format!("{} has no epoch count", path.display()))?;
    Ok(done.int64_value(&[0]) as u32)
}

/// The training loss on `inputs` (the pipeline's output for `samples`) and the logits
/// on `inputs`: cross-entropy, or TRADES' `CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))` with
/// gradients through both terms. `amp` runs the forward passes under autocast.
pub fn training_loss(
    model: &dyn ModuleT,
    inputs: &Tensor,
    samples: &crate::data::Samples,
    kind: LossKind,
    beta: f64,
    amp: bool,
) -> anyhow::Result<(Tensor, Tensor)> {
    // tch's autocast goes through libtorch's deprecated CUDA autocast calls, which print
    // a warning on every entry on CUDA: enter it only for mixed precision.
    let forward = |x: &Tensor| {
        if amp {
            tch::autocast(true, || model.forward_t(x, true)).to_kind(Kind::Float)
        } else {
            model.forward_t(x, true)
        }
    };
    let logits = forward(inputs);
    let loss = match kind {
        LossKind::Ce => logits.cross_entropy_for_logits(&samples.labels),
        LossKind::Trades => {
            let clean = forward(&samples.images);
            let kl =
                sat_core::objective_value(&logits, &sat_core::Objective::kl_divergence(&clean))?;
            clean.cross_entropy_for_logits(&samples.labels) + kl.mean(Kind::Float) * beta
        }
    };
    Ok((loss, logits))
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
    /// Ctrl-C; the last finished epoch's checkpoint is kept.
    Interrupted,
}

/// Trains, checkpoints and evaluates the run described by `config` into `run`. On an
/// error, `metrics.json` keeps the finished epochs, status `failed` and the error.
/// With `resume`, training continues from the run directory's state file.
pub fn run(
    config: &RunConfig,
    registry: &Registry,
    run: &RunDir,
    device: Device,
    interrupted: &AtomicBool,
    resume: bool,
) -> anyhow::Result<(Outcome, Metrics)> {
    let mut metrics = Metrics {
        status: "running".into(),
        ..Default::default()
    };
    if resume {
        // Keep the figures of the finished epochs.
        if let Ok(text) = std::fs::read_to_string(run.file("metrics.json")) {
            if let Ok(previous) = serde_json::from_str::<Metrics>(&text) {
                metrics.epochs = previous.epochs;
            }
        }
    }
    match train_and_evaluate(
        config,
        registry,
        run,
        device,
        interrupted,
        &mut metrics,
        resume,
    ) {
        Ok(outcome) => Ok((outcome, metrics)),
        Err(e) => {
            metrics.status = "failed".into();
            metrics.error = Some(format!("{e:#}"));
            if let Err(write) = run.write_metrics(&metrics) {
                log::error!("cannot record the failure in metrics.json: {write}");
            }
            Err(e)
        }
    }
}

fn train_and_evaluate(
    config: &RunConfig,
    registry: &Registry,
    run: &RunDir,
    device: Device,
    interrupted: &AtomicBool,
    metrics: &mut Metrics,
    resume: bool,
) -> anyhow::Result<Outcome> {
    let (train, test) = load_datasets(config)?;
    log::info!(
        "dataset {}: {} training and {} test images, {} classes, on {:?}",
        config.data.dataset,
        train.len(),
        test.len(),
        train.num_classes(),
        device
    );
    if config.model.torchscript.is_some() {
        bail!("[model] torchscript: a TorchScript model can be evaluated and attacked (`sat-host eval --config ...`), not trained here; use [model] arch");
    }
    let mut net = build_network(config, train.num_classes(), device)?;
    let t = &config.train;
    let mut optimizer = Optimizer::new(&net.vs, Rule::from_config(t));
    let batch_size = t.batch_size.max(1);
    let batches = (train.len() as usize).div_ceil(batch_size);
    let schedule = Schedule::new(t.schedule, t.lr, &t.milestones, t.gamma, t.epochs, batches);
    let state_file = run.file(STATE_FILE);
    let amp = mixed_precision(t, device);
    let mut scaler = LossScale::default();
    let mut first_epoch = 0;
    if resume {
        first_epoch = load_state(&mut net.vs, &mut optimizer, &mut scaler, &state_file)?;
        metrics.epochs.truncate(first_epoch as usize);
        log::info!(
            "resuming after epoch {first_epoch} of {} from {}",
            t.epochs,
            state_file.display()
        );
    }
    let mut pipeline = Pipeline::for_training(registry, config)?;
    match &pipeline.attack {
        Some(a) => log::info!(
            "training inputs from attack `{}` ({}, eps {:.5}){}{}, loss {:?}",
            a.origin.name,
            a.threat.norm.as_str(),
            a.threat.epsilon,
            match &pipeline.mix {
                Some((m, p)) => format!(", or `{}` with probability {p}", m.origin.name),
                None => String::new(),
            },
            if pipeline.uses_saliency() {
                format!(" with saliency from {}", t.saliency.join(", "))
            } else {
                String::new()
            },
            t.loss
        ),
        None if !t.saliency.is_empty() => {
            log::warn!("saliency sources are configured but no attack uses them")
        }
        None => log::info!("standard training (no attack)"),
    }

    let checkpoint = run.file("checkpoint.safetensors");
    let adapter = OracleAdapter(ModelOracle {
        model: net.model.as_ref(),
        classes: train.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    for epoch in first_epoch..t.epochs {
        // Data order, augmentation and the attacks' randomness depend on (seed, epoch) only.
        let mut rng = SplitMix::new(config.seed, 1 + epoch as u64);
        tch::manual_seed((config.seed as i64).wrapping_add(1 + epoch as i64));
        let order = rng.permutation(train.len() as usize);
        let bar = crate::logging::bars().add(ProgressBar::new(batches as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, t.epochs));
        if let Some(i) = pipeline.epoch_source(epoch) {
            log::info!(
                "epoch {}: saliency source `{}`",
                epoch + 1,
                pipeline.sources[i].origin.name
            );
        }
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0i64);
        for (step, chunk) in order.chunks(batch_size).enumerate() {
            if interrupted.load(Ordering::SeqCst) {
                bar.abandon_with_message("interrupted");
                log::warn!("interrupted during epoch {}; the checkpoint of the last finished epoch is kept", epoch + 1);
                metrics.status = "interrupted".into();
                run.write_metrics(metrics)?;
                return Ok(Outcome::Interrupted);
            }
            let index = Tensor::from_slice(chunk);
            let mut samples = train.select(&index);
            if config.data.crop_padding > 0 || config.data.flip {
                samples = augment::crop_and_flip(
                    &samples,
                    config.data.crop_padding.max(0),
                    config.data.flip,
                    &mut rng,
                );
            }
            let samples = samples.to(device);
            let inputs = match pipeline.inputs(
                &samples,
                epoch,
                t.epochs,
                Phase::Training,
                &oracle,
                &mut rng,
            ) {
                Ok(inputs) => inputs,
                Err(e) => {
                    bar.abandon_with_message("plugin error");
                    return Err(e.into());
                }
            };
            let (loss, logits) = training_loss(
                net.model.as_ref(),
                &inputs,
                &samples,
                t.loss,
                t.trades_beta,
                amp,
            )?;
            let loss_value = loss.double_value(&[]);
            if !loss_value.is_finite() {
                bar.abandon_with_message("non-finite loss");
                bail!(
                    "the training loss became {loss_value} in epoch {} (lower [train] lr?); the last good checkpoint is {}",
                    epoch + 1,
                    if checkpoint.exists() { checkpoint.display().to_string() } else { "none (first epoch)".into() }
                );
            }
            let lr = schedule.rate(epoch as usize * batches + step);
            optimizer.backward_step_with(&loss, lr, amp.then_some(&mut scaler));
            let n = chunk.len() as i64;
            loss_sum += loss_value * n as f64;
            seen += n;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&samples.labels)
                .sum(Kind::Int64)
                .int64_value(&[]);
            bar.set_message(format!(
                "loss {:.3} acc {:.3} {:.0} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / start.elapsed().as_secs_f64()
            ));
            bar.inc(1);
        }
        bar.finish();
        let seconds = start.elapsed().as_secs_f64();
        let e = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            images_per_sec: seen as f64 / seconds,
            seconds,
            rss_mib: crate::report::resident_mib(),
        };
        log::info!(
            "epoch {}/{}: loss {:.4}, train accuracy {:.4}, {:.0} images/s, {:.1} s, RSS {:.0} MiB",
            e.epoch,
            t.epochs,
            e.train_loss,
            e.train_accuracy,
            e.images_per_sec,
            e.seconds,
            e.rss_mib
        );
        metrics.epochs.push(e);
        // Metrics before state: a crash in between makes --resume redo this epoch, and
        // the resumed run drops its figures before recording them again.
        save_checkpoint(&net.vs, &checkpoint)?;
        run.write_metrics(metrics)?;
        save_state(&net.vs, &optimizer, &scaler, epoch + 1, &state_file)?;
    }

    let evaluation = eval::evaluate(net.model.as_ref(), &test, config, registry, device)?;
    metrics.clean_accuracy = Some(evaluation.clean);
    metrics.robust_accuracy = evaluation.robust;
    metrics.alignment = evaluation.alignment;
    metrics.status = "completed".into();
    run.write_metrics(metrics)?;
    Ok(Outcome::Completed)
}
