//! Clean and robust accuracy of a trained model, with their breakdown: per class, the
//! confusion matrix, a targeted attack's success rate and the median perturbation norms
//! of the successful adversarial examples (see [`Tally`]).
//!
//! With several ranks (a data-parallel run) each rank evaluates every `W`-th batch and
//! the counts are summed (the norms gathered), so the figures are those of one process:
//! the batches are the same, and libtorch's generator and the pipeline's draws are
//! seeded per batch (by its index), not per process.
mod tally;

pub use tally::{median, Tally, TargetCounts};

use crate::config::RunConfig;
use crate::data::{rng::SplitMix, Data, Samples};
use crate::distributed::Ranks;
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::{create_eval_attack, Inputs, Pipeline};
use crate::plugins::registry::Registry;
use crate::report::{Metrics, RobustAccuracy, TargetedSuccess, CONFUSION_LIMIT};
use sat_core::{OracleAdapter, OracleRef, Phase, ThreatModel};
use std::collections::HashMap;
use tch::{nn::ModuleT, Device, Kind, Tensor};

/// Accuracy of `model` on `limit` samples of `data` spread evenly over it (all if 0,
/// so that class-sorted test sets stay balanced), optionally on the inputs `pipeline`
/// makes. In one process.
pub fn accuracy(
    model: &dyn ModuleT,
    data: &Data,
    limit: usize,
    batch_size: usize,
    device: Device,
    pipeline: Option<&mut Pipeline>,
    seed: u64,
) -> anyhow::Result<f64> {
    let spec = Sharded {
        limit,
        batch_size,
        device,
        seed,
    };
    sharded_accuracy(model, data, &spec, pipeline, &Ranks::single())
}

/// How [`sharded_accuracy`] reads the test set.
pub struct Sharded {
    /// Samples (0 = all), spread over the set.
    pub limit: usize,
    /// Batch size.
    pub batch_size: usize,
    /// The model's device.
    pub device: Device,
    /// The seed of the per-batch draws.
    pub seed: u64,
}

/// The libtorch seed and the pipeline's draws of evaluation batch `batch`: keyed by the
/// batch, so a batch is attacked alike whichever rank evaluates it.
fn batch_seeds(seed: u64, batch: usize) -> (i64, SplitMix) {
    let mut rng = SplitMix::new(seed ^ 0x5EED, 0xE7A1_0000 + batch as u64);
    let torch = (rng.next_u64() >> 1) as i64;
    (torch, rng)
}

/// [`accuracy`] over the ranks: rank `r` evaluates batches `r, r + W, …`, and the counts
/// are summed over the ranks (every rank returns the same figure).
pub fn sharded_accuracy(
    model: &dyn ModuleT,
    data: &Data,
    spec: &Sharded,
    pipeline: Option<&mut Pipeline>,
    ranks: &Ranks,
) -> anyhow::Result<f64> {
    Ok(sharded_tally(model, data, spec, pipeline, ranks)?.accuracy())
}

/// The model's logits on `images` (eval mode, no gradient), checked: shape
/// `[N, classes]` and finite.
pub fn checked_logits(
    model: &dyn ModuleT,
    images: &Tensor,
    classes: i64,
) -> anyhow::Result<Tensor> {
    let logits = tch::no_grad(|| model.forward_t(images, false));
    sat_models::check_logits(&logits, images.size()[0], classes, false)
        .map_err(anyhow::Error::msg)?;
    if !sat_models::finite(&logits) {
        anyhow::bail!(
            "the model's logits are not finite (NaN or infinite) on a test batch; evaluation stops rather than report a meaningless accuracy"
        );
    }
    Ok(logits)
}

/// The model's predicted classes for `images`, from [`checked_logits`].
fn predict(model: &dyn ModuleT, images: &Tensor, classes: i64) -> anyhow::Result<Tensor> {
    Ok(checked_logits(model, images, classes)?.argmax(-1, false))
}

/// The pipeline's inputs for evaluation batch `batch` (its index in
/// [`Data::spread_batches`]), with libtorch's generator and the pipeline's draws
/// seeded by [`batch_seeds`]: what every evaluation of that batch sees, whichever rank
/// or command (`eval`, `attack`) runs it.
pub fn seeded_inputs(
    pipeline: &mut Pipeline,
    samples: &Samples,
    seed: u64,
    batch: usize,
    oracle: &OracleRef<'_>,
) -> anyhow::Result<Inputs> {
    let (torch_seed, mut rng) = batch_seeds(seed, batch);
    tch::manual_seed(torch_seed);
    Ok(pipeline.inputs(samples, 0, 1, Phase::Evaluation, oracle, &mut rng)?)
}

/// The [`Tally`] of the model's predictions, as [`sharded_accuracy`] reads the test set:
/// on the clean images, or on the inputs `pipeline` makes (then also the clean
/// predictions per class, the targets' hits and the perturbation norms). Summed over
/// the ranks.
pub fn sharded_tally(
    model: &dyn ModuleT,
    data: &Data,
    spec: &Sharded,
    pipeline: Option<&mut Pipeline>,
    ranks: &Ranks,
) -> anyhow::Result<Tally> {
    tally_over(model, data, spec, pipeline, ranks, None)
}

/// The clean predictions of the evaluation batches, by batch index, with the indices of
/// the batch's samples: [`evaluate`]'s clean pass records them and its attacked passes
/// reuse them for a batch of the same samples (the same images, the same model in eval
/// mode: the same predictions), instead of a second clean forward pass per attack and
/// budget.
#[derive(Default)]
struct CleanPredictions {
    batches: HashMap<usize, (Tensor, Tensor)>,
}

impl CleanPredictions {
    /// Records the predictions of batch `b`, when its samples' indices are known.
    fn record(&mut self, b: usize, samples: &Samples, predicted: &Tensor) {
        if let Some(ids) = &samples.ids {
            self.batches
                .insert(b, (ids.shallow_clone(), predicted.shallow_clone()));
        }
    }

    /// The recorded predictions of batch `b`, if it held the same samples.
    fn get(&self, b: usize, samples: &Samples) -> Option<Tensor> {
        let (ids, predicted) = self.batches.get(&b)?;
        let now = samples.ids.as_ref()?;
        (ids.size() == now.size() && ids.equal(now)).then(|| predicted.shallow_clone())
    }
}

/// [`sharded_tally`], recording the clean pass's predictions in `clean` (without a
/// pipeline) or reusing them (with one).
fn tally_over(
    model: &dyn ModuleT,
    data: &Data,
    spec: &Sharded,
    mut pipeline: Option<&mut Pipeline>,
    ranks: &Ranks,
    mut clean: Option<&mut CleanPredictions>,
) -> anyhow::Result<Tally> {
    let adapter = OracleAdapter(ModelOracle {
        model,
        classes: data.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    let classes = data.num_classes();
    let mut tally = Tally::new(classes.max(0) as usize);
    for (b, samples) in rank_batches(data, spec.limit, spec.batch_size, ranks) {
        crate::interrupt::check()?;
        let batch = samples.map_err(anyhow::Error::from).and_then(|samples| {
            let samples = samples.to(spec.device);
            let p = pipeline.as_deref_mut();
            let c = clean.as_deref_mut();
            tally_batch(&mut tally, model, &samples, (p, c), (spec.seed, b), &oracle)
        });
        // An attack stopped by the oracle's refusal, or a stopped data loader, is the
        // interruption.
        batch.map_err(crate::interrupt::or_interrupted)?;
    }
    tally.reduce(ranks, spec.device)
}

/// Adds evaluation batch `b` (with the run's `seed`: `at = (seed, b)`) to `tally`: the
/// model's predictions on the clean samples (recorded in `clean`, if given), or on the
/// inputs `pipeline` makes from them (then also the clean predictions, from `clean` when
/// it holds this batch's, the targets' hits and the norms).
fn tally_batch(
    tally: &mut Tally,
    model: &dyn ModuleT,
    samples: &Samples,
    (pipeline, clean): (Option<&mut Pipeline>, Option<&mut CleanPredictions>),
    (seed, b): (u64, usize),
    oracle: &OracleRef<'_>,
) -> anyhow::Result<()> {
    let (labels, classes) = (&samples.labels, tally.classes as i64);
    let Some(p) = pipeline else {
        let predicted = predict(model, &samples.images, classes)?;
        if let Some(clean) = clean {
            clean.record(b, samples, &predicted);
        }
        return tally.add_predictions(labels, &predicted);
    };
    let inputs = seeded_inputs(p, samples, seed, b, oracle)?;
    let predicted = predict(model, &inputs.images, classes)?;
    tally.add_predictions(labels, &predicted)?;
    let clean_predicted = match clean.and_then(|c| c.get(b, samples)) {
        Some(recorded) => recorded,
        None => predict(model, &samples.images, classes)?,
    };
    tally.add_clean(labels, &clean_predicted)?;
    if let Some(targets) = &inputs.targets {
        tally.add_targets(labels, &predicted, targets)?;
    }
    let images = (&samples.images, &inputs.images);
    tally.add_norms(images, labels, &predicted, &clean_predicted)?;
    Ok(())
}

/// This rank's evaluation batches (`r, r + W, …`) of `limit` samples spread over
/// `data` (all if 0), with their index among all batches; read ahead when streamed.
pub fn rank_batches<'a>(
    data: &'a Data,
    limit: usize,
    batch_size: usize,
    ranks: &Ranks,
) -> impl Iterator<Item = (usize, Result<Samples, crate::data::DataError>)> + 'a {
    let (rank, world) = (ranks.rank(), ranks.world_size());
    let mine: Vec<(usize, Tensor)> = data
        .spread_batches(limit, batch_size)
        .into_iter()
        .enumerate()
        .filter(|(b, _)| b % world == rank)
        .collect();
    let numbers: Vec<usize> = mine.iter().map(|(b, _)| *b).collect();
    numbers
        .into_iter()
        .zip(data.batches(mine.into_iter().map(|(_, t)| t).collect()))
}

/// The [`RobustAccuracy`] record of attack `attack` in `threat` from its tally.
pub fn robust_record(attack: &str, threat: &ThreatModel, tally: &Tally) -> RobustAccuracy {
    let (median_l2, median_linf) = tally.median_norms();
    let counts = |v: Vec<i64>| v.into_iter().map(|c| c.max(0) as u64).collect();
    RobustAccuracy {
        attack: attack.to_owned(),
        norm: threat.norm.as_str().into(),
        epsilon: threat.epsilon,
        steps: threat.steps,
        accuracy: tally.accuracy(),
        samples: tally.total().max(0) as u64,
        class_counts: counts(tally.class_counts()),
        per_class: tally.per_class(),
        clean_per_class: tally.clean_per_class().unwrap_or_default(),
        confusion: if tally.classes <= CONFUSION_LIMIT {
            tally.confusion_rows()
        } else {
            Vec::new()
        },
        targeted: tally.targeted.map(|t| TargetedSuccess {
            rate: t.hits as f64 / t.evaluated.max(1) as f64,
            successes: t.hits.max(0) as u64,
            evaluated: t.evaluated.max(0) as u64,
        }),
        misclassified: (tally.total() - tally.correct_per_class().iter().sum::<i64>()).max(0)
            as u64,
        fooled: tally.norms.len() as u64,
        median_l2,
        median_linf,
    }
}

/// What [`evaluate`] measures.
pub struct Evaluation {
    /// Clean accuracy on the whole test set.
    pub clean: f64,
    /// Clean accuracy on each class of the whole test set (`None`: no images).
    pub clean_per_class: Vec<Option<f64>>,
    /// The test set's class names.
    pub class_names: Vec<String>,
    /// Robust accuracy per attack and budget.
    pub robust: Vec<RobustAccuracy>,
    /// Mean Etmann alignment, when `[eval] alignment` is on.
    pub alignment: Option<f64>,
}

impl Evaluation {
    /// Records the figures in `metrics` (clean, robust, alignment, per-class breakdown).
    pub fn record(self, metrics: &mut Metrics) {
        metrics.clean_accuracy = Some(self.clean);
        metrics.clean_per_class = self.clean_per_class;
        metrics.class_names = self.class_names;
        metrics.robust_accuracy = self.robust;
        metrics.alignment = self.alignment;
    }
}

/// The mean Etmann et al. (2019) alignment `|⟨x, ∇ₓΨ_ŷ(x)⟩| / ‖∇ₓΨ_ŷ(x)‖` over `limit`
/// test images spread over `data` (all if 0), `Ψ_ŷ` being the logit of the predicted
/// class; samples with a zero gradient count as 0.
pub fn alignment(
    model: &dyn ModuleT,
    data: &Data,
    limit: usize,
    batch_size: usize,
    device: Device,
) -> anyhow::Result<f64> {
    let (total, n) = alignment_sums(model, data, limit, batch_size, device, &Ranks::single())?;
    Ok(total / n.max(1) as f64)
}

/// This rank's share of [`alignment`]: the sum over its batches (`r, r + W, …`) and
/// their sample count.
fn alignment_sums(
    model: &dyn ModuleT,
    data: &Data,
    limit: usize,
    batch_size: usize,
    device: Device,
    ranks: &Ranks,
) -> anyhow::Result<(f64, i64)> {
    let (mut total, mut n) = (0f64, 0i64);
    for (_, samples) in rank_batches(data, limit, batch_size, ranks) {
        crate::interrupt::check()?;
        let x = samples
            .map_err(|e| crate::interrupt::or_interrupted(e.into()))?
            .to(device)
            .images
            .detach()
            .set_requires_grad(true);
        n += x.size()[0];
        let logits = tch::with_grad(|| model.forward_t(&x, false));
        let predicted = logits.argmax(-1, false).unsqueeze(1);
        let score = logits.gather(1, &predicted, false).sum(Kind::Float);
        let g = Tensor::run_backward(&[score], &[&x], false, false).remove(0);
        let flat_g = g.flatten(1, -1);
        let dot = (x.detach().flatten(1, -1) * &flat_g).sum_dim_intlist(1, false, Kind::Double);
        let norm = flat_g
            .to_kind(Kind::Double)
            .norm_scalaropt_dim(2, [1i64].as_slice(), false);
        let per = dot.abs() / norm.clamp_min(1e-30);
        total += per.sum(Kind::Double).double_value(&[]);
    }
    Ok((total, n))
}

/// The mean Etmann alignment over the test set (every rank's share summed).
fn mean_alignment(
    model: &dyn ModuleT,
    test: &Data,
    config: &RunConfig,
    device: Device,
    ranks: &Ranks,
) -> anyhow::Result<f64> {
    let eval = &config.eval;
    let (total, n) = alignment_sums(
        model,
        test,
        eval.max_samples,
        eval.batch_size,
        device,
        ranks,
    )?;
    let sums = ranks.sum(&[total, n as f64], device)?;
    let a = sums[0] / sums[1].max(1.0);
    log::info!("mean Etmann alignment {a:.4}");
    Ok(a)
}

/// Clean accuracy on the whole test set and robust accuracy for every attack and budget
/// of `[eval]`, sharded over `ranks` (see the module's documentation).
pub fn evaluate(
    model: &dyn ModuleT,
    test: &Data,
    config: &RunConfig,
    registry: &Registry,
    device: Device,
    ranks: &Ranks,
) -> anyhow::Result<Evaluation> {
    let eval = &config.eval;
    crate::interrupt::check()?;
    let spec = |limit| Sharded {
        limit,
        batch_size: eval.batch_size,
        device,
        seed: config.seed,
    };
    // The clean predictions, kept per batch for the attacked passes over the same batches.
    let mut clean_predictions = CleanPredictions::default();
    let clean_tally = tally_over(
        model,
        test,
        &spec(0),
        None,
        ranks,
        Some(&mut clean_predictions),
    )?;
    let clean = clean_tally.accuracy();
    log::info!("clean accuracy {:.4} on {} test images", clean, test.len());
    let alignment = if eval.alignment {
        Some(mean_alignment(model, test, config, device, ranks)?)
    } else {
        None
    };
    let mut robust = Vec::new();
    for name in &eval.attacks {
        for &eps in &eval.epsilons {
            crate::interrupt::check()?;
            let attack = create_eval_attack(registry, config, name, eps)?;
            let threat = attack.threat;
            let mut pipeline = Pipeline::new(registry, config, Some(attack))?;
            let shown = eps.shown(threat.norm.as_str());
            log::info!("evaluating {name} at eps {shown}");
            // The same per-batch seeds for every attack: evaluations are reproducible,
            // comparable, and the same whatever the number of ranks.
            let began = std::time::Instant::now();
            let tally = tally_over(
                model,
                test,
                &spec(eval.max_samples),
                Some(&mut pipeline),
                ranks,
                Some(&mut clean_predictions),
            )
            .map_err(|e| match e.downcast::<crate::interrupt::Interrupted>() {
                Ok(stop) => anyhow::Error::new(stop),
                Err(e) => e.context(format!("evaluating {name} at epsilon {shown}")),
            })?;
            let record = robust_record(name, &threat, &tally);
            log::info!(
                "{name} ({}, eps {shown}, {} steps): robust accuracy {:.4} ({:.2} s)",
                threat.norm.as_str(),
                threat.steps,
                record.accuracy,
                began.elapsed().as_secs_f64()
            );
            robust.push(record);
        }
    }
    Ok(Evaluation {
        clean,
        clean_per_class: clean_tally.per_class(),
        class_names: test.class_names().to_vec(),
        robust,
        alignment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    #[test]
    fn alignment_of_a_linear_model_is_the_projection_on_its_weights() {
        // Ψ_k(x) = w_k · x: α(x) = |x · w_ŷ| / ‖w_ŷ‖.
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(
            vs.root() / "l",
            12,
            2,
            nn::LinearConfig {
                bias: false,
                ..Default::default()
            },
        );
        let model = nn::seq_t().add_fn(|x| x.flatten(1, -1)).add(lin);
        let images = Tensor::rand([5, 3, 2, 2], (Kind::Float, Device::Cpu));
        let data = Data::Memory(crate::data::Dataset {
            images: images.copy(),
            labels: Tensor::zeros([5], (Kind::Int64, Device::Cpu)),
            boxes: None,
            masks: None,
            class_names: vec!["a".into(), "b".into()],
        });
        let got = alignment(&model, &data, 0, 2, Device::Cpu).unwrap();
        let w = vs.variables()["l.weight"].copy();
        let flat = images.flatten(1, -1);
        let logits = flat.matmul(&w.tr());
        let pred = logits.argmax(-1, false);
        let rows = w.index_select(0, &pred);
        let expected = ((&flat * &rows).sum_dim_intlist(1, false, Kind::Float).abs()
            / rows.norm_scalaropt_dim(2, [1i64].as_slice(), false))
        .mean(Kind::Float)
        .double_value(&[]);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }
}
