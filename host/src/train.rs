//! The training loop: data order and augmentation from the run's seed, inputs from the
//! pipeline, a checkpoint after every epoch, clean stop on Ctrl-C or a non-finite loss.
use crate::config::{LossKind, OptimizerKind, RunConfig};
use crate::data::{augment, rng::SplitMix, shapes, Dataset};
use crate::eval;
use crate::oracle::ModelOracle;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::report::{temporary_sibling, EpochMetrics, Metrics, RunDir};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sat_core::{OracleAdapter, Phase};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{nn, nn::ModuleT, nn::OptimizerConfig, Device, Kind, Tensor};

/// The training and test sets of `config`.
pub fn load_datasets(config: &RunConfig) -> anyhow::Result<(Dataset, Dataset)> {
    let d = &config.data;
    match d.dataset.as_str() {
        "shapes" => {
            let train = shapes::generate(d.train_size, d.image_size, d.classes, config.seed, 0)
                .map_err(anyhow::Error::msg)?;
            let test = shapes::generate(d.test_size, d.image_size, d.classes, config.seed, 1)
                .map_err(anyhow::Error::msg)?;
            Ok((train, test))
        }
        other => bail!("[data] dataset: unknown dataset `{other}`; accepted: shapes"),
    }
}

/// A model and its variables.
pub struct Network {
    /// Variables (parameters and buffers).
    pub vs: nn::VarStore,
    /// The module.
    pub model: Box<dyn ModuleT>,
}

/// Builds the model of `config` for `classes` on `device`, initialised from the seed.
pub fn build_network(config: &RunConfig, classes: i64, device: Device) -> anyhow::Result<Network> {
    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(device);
    let model = crate::model::build(&vs.root(), &config.model.arch, config.model.width, classes)
        .map_err(|e| anyhow::anyhow!("[model] {e}"))?;
    Ok(Network { vs, model })
}

/// Saves the variables to `path` atomically (safetensors: the extension decides).
pub fn save_checkpoint(vs: &nn::VarStore, path: &std::path::Path) -> anyhow::Result<()> {
    let tmp = temporary_sibling(path);
    vs.save(&tmp)
        .with_context(|| format!("writing checkpoint {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving checkpoint into place at {}", path.display()))
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
pub fn run(
    config: &RunConfig,
    registry: &Registry,
    run: &RunDir,
    device: Device,
    interrupted: &AtomicBool,
) -> anyhow::Result<(Outcome, Metrics)> {
    let mut metrics = Metrics {
        status: "running".into(),
        ..Default::default()
    };
    match train_and_evaluate(config, registry, run, device, interrupted, &mut metrics) {
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
    let net = build_network(config, train.num_classes(), device)?;
    let t = &config.train;
    let mut optimizer = match t.optimizer {
        OptimizerKind::Adam => nn::Adam {
            wd: t.weight_decay,
            ..Default::default()
        }
        .build(&net.vs, t.lr)?,
        OptimizerKind::Sgd => nn::Sgd {
            momentum: t.momentum,
            wd: t.weight_decay,
            ..Default::default()
        }
        .build(&net.vs, t.lr)?,
    };
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
    let batch_size = t.batch_size.max(1);
    let batches = (train.len() as usize).div_ceil(batch_size);
    let adapter = OracleAdapter(ModelOracle {
        model: net.model.as_ref(),
        classes: train.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    for epoch in 0..t.epochs {
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
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0i64);
        for chunk in order.chunks(batch_size) {
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
            let logits = net.model.forward_t(&inputs, true);
            let loss = match t.loss {
                LossKind::Ce => logits.cross_entropy_for_logits(&samples.labels),
                LossKind::Trades => {
                    // CE(f(x), y) + β·KL(f(x) ‖ f(x_adv)), gradients through both terms.
                    let clean = net.model.forward_t(&samples.images, true);
                    let kl = sat_core::objective_value(
                        &logits,
                        &sat_core::Objective::kl_divergence(&clean),
                    )?;
                    clean.cross_entropy_for_logits(&samples.labels)
                        + kl.mean(Kind::Float) * t.trades_beta
                }
            };
            let loss_value = loss.double_value(&[]);
            if !loss_value.is_finite() {
                bar.abandon_with_message("non-finite loss");
                bail!(
                    "the training loss became {loss_value} in epoch {} (lower [train] lr?); the last good checkpoint is {}",
                    epoch + 1,
                    if checkpoint.exists() { checkpoint.display().to_string() } else { "none (first epoch)".into() }
                );
            }
            optimizer.backward_step(&loss);
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
        };
        log::info!(
            "epoch {}/{}: loss {:.4}, train accuracy {:.4}, {:.0} images/s, {:.1} s",
            e.epoch,
            t.epochs,
            e.train_loss,
            e.train_accuracy,
            e.images_per_sec,
            e.seconds
        );
        metrics.epochs.push(e);
        save_checkpoint(&net.vs, &checkpoint)?;
        run.write_metrics(metrics)?;
    }

    let (clean, robust) = eval::evaluate(net.model.as_ref(), &test, config, registry, device)?;
    metrics.clean_accuracy = Some(clean);
    metrics.robust_accuracy = robust;
    metrics.status = "completed".into();
    run.write_metrics(metrics)?;
    Ok(Outcome::Completed)
}
