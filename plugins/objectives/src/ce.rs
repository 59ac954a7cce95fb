//! Cross-entropy on the model's inputs (standard and adversarial training).
use crate::terms::mean_cross_entropy;
use sat_core::{
    component::Configurable, Batch, Loss, PluginError, TrainingModel, TrainingObjective,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `ce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeConfig {
    /// Label smoothing `s` in `[0, 1)`: the target puts `1 − s` on the label and `s`
    /// spread evenly over the classes, as torch's `CrossEntropyLoss(label_smoothing = s)`.
    pub label_smoothing: f64,
}

impl Default for CeConfig {
    fn default() -> Self {
        Self {
            label_smoothing: 0.0,
        }
    }
}

/// `(1 − s)·CE(f(x'), y) + s·mean_k(−log pₖ(x'))`, averaged over the batch.
pub struct CrossEntropy {
    config: CeConfig,
}

impl Configurable for CrossEntropy {
    type Config = CeConfig;
    fn from_config(config: CeConfig) -> Result<Self, PluginError> {
        let s = config.label_smoothing;
        if !(0.0..1.0).contains(&s) {
            return Err(PluginError::config(format!(
                "[ce] label_smoothing must be in [0, 1), got {s}"
            )));
        }
        Ok(Self { config })
    }
}

/// The batch mean of the label-smoothed cross-entropy; plain cross-entropy when
/// `smoothing` is 0.
pub(crate) fn smoothed_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f64,
) -> Result<Tensor, PluginError> {
    let ce = mean_cross_entropy(logits, labels)?;
    if smoothing == 0.0 {
        return Ok(ce);
    }
    let kind = logits.kind();
    let uniform = logits
        .f_log_softmax(-1, kind)?
        .f_mean_dim(-1, false, kind)?
        .f_neg()?
        .f_mean(kind)?;
    Ok(ce
        .f_mul_scalar(1.0 - smoothing)?
        .f_add(&uniform.f_mul_scalar(smoothing)?)?)
}

impl TrainingObjective for CrossEntropy {
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError> {
        let logits = model.forward(inputs)?;
        let value = smoothed_cross_entropy(&logits, &batch.labels(), self.config.label_smoothing)?;
        Ok(Loss { value, logits })
    }
}

sat_core::register_objective!(
    CrossEntropy,
    name = "ce",
    description = "cross-entropy on the model's inputs (label_smoothing as torch's)",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config_error, rng_lock, Fixture, CLASSES};
    use tch::Kind;

    #[test]
    fn plain_and_smoothed_values_match_the_definition() {
        let _rng = rng_lock();
        let fx = Fixture::new(1);
        let p = fx.probabilities(&fx.inputs);
        let onehot = fx.labels.one_hot(CLASSES).to_kind(Kind::Double);
        let nll = -(p.log() * &onehot).sum_dim_intlist(-1, false, Kind::Double);
        let uniform = -p.log().mean_dim(-1, false, Kind::Double);
        for s in [0.0, 0.1, 0.5] {
            let mut ce = CrossEntropy::from_config(CeConfig { label_smoothing: s }).unwrap();
            let (loss, ..) = fx.run(&mut ce, 0);
            let expected = ((1.0 - s) * &nll + s * &uniform).mean(Kind::Double);
            let err = (loss.value - expected).abs().double_value(&[]);
            assert!(err < 1e-12, "s = {s}: error {err}");
            assert!(loss
                .logits
                .allclose(&fx.logits(&fx.inputs), 1e-12, 1e-12, false));
        }
    }

    #[test]
    fn config_is_checked() {
        assert!(config_error("ce", "label_smoothing = 1.0").contains("[ce] label_smoothing"));
        assert!(config_error("ce", "label_smoothing = -0.1").contains("[0, 1)"));
        assert!(config_error("ce", "smoothing = 0.1").contains("smoothing"));
    }

    #[test]
    fn inputs_are_not_modified() {
        let _rng = rng_lock();
        let mut ce = CrossEntropy::from_config(CeConfig {
            label_smoothing: 0.1,
        })
        .unwrap();
        Fixture::new(2).assert_inputs_untouched(&mut ce);
    }
}
