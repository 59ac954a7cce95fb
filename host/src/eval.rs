//! Clean and robust accuracy of a trained model.
use crate::config::RunConfig;
use crate::data::{rng::SplitMix, Dataset};
use crate::oracle::ModelOracle;
use crate::pipeline::{create_eval_attack, Pipeline};
use crate::registry::Registry;
use crate::report::RobustAccuracy;
use anyhow::Context;
use sat_core::{OracleAdapter, Phase};
use tch::{nn::ModuleT, Device, Kind, Tensor};

/// Accuracy of `model` on `limit` samples of `data` spread evenly over it (all if 0,
/// so that class-sorted test sets stay balanced), optionally on the inputs `pipeline`
/// makes.
pub fn accuracy(
    model: &dyn ModuleT,
    data: &Dataset,
    limit: usize,
    batch_size: usize,
    device: Device,
    mut pipeline: Option<&mut Pipeline>,
    seed: u64,
) -> anyhow::Result<f64> {
    let n = if limit == 0 {
        data.len()
    } else {
        (limit as i64).min(data.len())
    };
    let adapter = OracleAdapter(ModelOracle {
        model,
        classes: data.num_classes() as u32,
    });
    let oracle = adapter.as_ref();
    let mut rng = SplitMix::new(seed, 0xE7A1);
    let mut correct = 0i64;
    let step = batch_size.max(1) as i64;
    for start in (0..n).step_by(step as usize) {
        // Sample i of the n evaluated is i·len/n: every sample when n = len.
        let index = Tensor::arange_start(start, (start + step).min(n), (Kind::Int64, Device::Cpu))
            * data.len();
        let index = index.floor_divide_scalar(n);
        let samples = data.select(&index).to(device);
        let inputs = match pipeline.as_deref_mut() {
            Some(p) => p.inputs(&samples, 0, 1, Phase::Evaluation, &oracle, &mut rng)?,
            None => samples.images.shallow_clone(),
        };
        let predicted = tch::no_grad(|| model.forward_t(&inputs, false)).argmax(-1, false);
        correct += predicted
            .eq_tensor(&samples.labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// Clean accuracy on the whole test set and robust accuracy for every attack and budget
/// of `[eval]`.
pub fn evaluate(
    model: &dyn ModuleT,
    test: &Dataset,
    config: &RunConfig,
    registry: &Registry,
    device: Device,
) -> anyhow::Result<(f64, Vec<RobustAccuracy>)> {
    let eval = &config.eval;
    let clean = accuracy(model, test, 0, eval.batch_size, device, None, config.seed)?;
    log::info!("clean accuracy {:.4} on {} test images", clean, test.len());
    let mut robust = Vec::new();
    for name in &eval.attacks {
        for &eps in &eval.epsilons {
            let attack = create_eval_attack(registry, config, name, eps)?;
            let threat = attack.threat;
            let mut pipeline = Pipeline::new(registry, config, Some(attack))?;
            // The same seed for every attack: evaluations are reproducible and comparable.
            tch::manual_seed(config.seed as i64 ^ 0x5EED);
            let acc = accuracy(
                model,
                test,
                eval.max_samples,
                eval.batch_size,
                device,
                Some(&mut pipeline),
                config.seed,
            )
            .with_context(|| format!("evaluating {name} at epsilon {eps}"))?;
            log::info!(
                "{name} ({}, eps {eps}, {} steps): robust accuracy {acc:.4}",
                threat.norm.as_str(),
                threat.steps
            );
            robust.push(RobustAccuracy {
                attack: name.clone(),
                norm: threat.norm.as_str().into(),
                epsilon: threat.epsilon,
                steps: threat.steps,
                accuracy: acc,
            });
        }
    }
    Ok((clean, robust))
}
