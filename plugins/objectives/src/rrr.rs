//! Right for the Right Reasons (Ross, Hughes & Doshi-Velez 2017): cross-entropy plus a
//! penalty on the input gradient of the log-probabilities outside the regions the
//! annotations mark as the reasons.
use crate::terms::{mean_cross_entropy, mean_squared_norm, weight};
use sat_core::{
    component::Configurable, Batch, Loss, Objective, PluginError, TrainingModel, TrainingObjective,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `rrr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RrrConfig {
    /// λ ≥ 0, the weight of the right-reasons penalty. The default, 10, puts the penalty
    /// on the scale of the cross-entropy (≈ ln 10 ≈ 2.3 early in training) on 32×32×3
    /// images: with about half of the 3072 values outside the object, a gradient of
    /// 0.01–0.02 per value there gives ‖·‖² ≈ 0.15–0.6 (the paper chose λ so the two
    /// terms have similar magnitudes). Tune it per dataset.
    pub lambda: f64,
}

impl Default for RrrConfig {
    fn default() -> Self {
        Self { lambda: 10.0 }
    }
}

/// `CE(f(x'), y) + λ·mean_n ‖(1 − A) ⊙ ∇ₓ Σₖ log pₖ(x')‖²`, `A = (S + 1)/2` the
/// saliency map in `[0, 1]` (1 = the reasons), broadcast over channels.
pub struct RightReasons {
    config: RrrConfig,
}

impl Configurable for RightReasons {
    type Config = RrrConfig;
    fn from_config(config: RrrConfig) -> Result<Self, PluginError> {
        weight("rrr", "lambda", config.lambda)?;
        Ok(Self { config })
    }
}

/// `1 − A = (1 − S)/2`, in the inputs' dtype, after checking that `saliency` is
/// `[N, 1 or C, H, W]` for inputs `[N, C, H, W]`.
fn outside_reasons(saliency: &Tensor, inputs: &Tensor) -> Result<Tensor, PluginError> {
    let (s, x) = (saliency.size(), inputs.size());
    let fits = s.len() == 4
        && x.len() == 4
        && s[0] == x[0]
        && (s[1] == 1 || s[1] == x[1])
        && s[2..] == x[2..];
    if !fits {
        return Err(PluginError::invalid_input(format!(
            "rrr: saliency maps must be [N, 1 or C, H, W] for inputs {x:?}, got {s:?}"
        )));
    }
    Ok(saliency
        .f_to_kind(inputs.kind())?
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_mul_scalar(0.5)?)
}

impl TrainingObjective for RightReasons {
    fn requires_saliency(&self) -> bool {
        true
    }
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError> {
        let saliency = batch.saliency().ok_or_else(|| {
            PluginError::invalid_input("rrr needs saliency maps (configure a saliency source)")
        })?;
        let outside = outside_reasons(&saliency, inputs)?;
        let g = model.input_gradient(inputs, Objective::log_probability_sum())?;
        let penalty = mean_squared_norm(&g.gradient.f_mul(&outside)?)?;
        let value = mean_cross_entropy(&g.logits, &batch.labels())?
            .f_add(&penalty.f_mul_scalar(self.config.lambda)?)?;
        Ok(Loss {
            value,
            logits: g.logits,
        })
    }
}

sat_core::register_objective!(
    RightReasons,
    name = "rrr",
    description = "Right for the Right Reasons: CE + lambda * |(1 - A) * grad_x sum_k log p_k|^2, A from saliency",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config_error, mean_squared_norm, rng_lock, Fixture};
    use sat_core::{testing::LinearModel, Phase};

    fn rrr(lambda: f64) -> RightReasons {
        RightReasons::from_config(RrrConfig { lambda }).unwrap()
    }

    #[test]
    fn zero_lambda_is_cross_entropy() {
        let _rng = rng_lock();
        Fixture::new(21).assert_zero_weight_is_ce(&mut rrr(0.0), false);
    }

    #[test]
    fn penalty_matches_closed_form() {
        let _rng = rng_lock();
        let fx = Fixture::new(22);
        let outside = (1.0 - &fx.saliency) / 2.0;
        let expected = mean_squared_norm(&(fx.log_probability_sum_gradient(&fx.inputs) * outside));
        fx.assert_penalty(&mut rrr(2.5), &mut rrr(0.0), 2.5, expected, 0);
    }

    #[test]
    fn per_channel_maps_are_accepted() {
        let _rng = rng_lock();
        let mut fx = Fixture::new(23);
        fx.saliency = fx.saliency.repeat([1, 2, 1, 1]);
        let _ = fx.saliency.get(0).get(1).fill_(1.0); // channel 1 of sample 0 is all reasons
        let outside = (1.0 - &fx.saliency) / 2.0;
        let expected = mean_squared_norm(&(fx.log_probability_sum_gradient(&fx.inputs) * outside));
        fx.assert_penalty(&mut rrr(2.5), &mut rrr(0.0), 2.5, expected, 0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let _rng = rng_lock();
        Fixture::new(24).assert_finite_differences(&mut rrr(10.0), 0);
    }

    #[test]
    fn saliency_is_required_and_checked() {
        let _rng = rng_lock();
        let fx = Fixture::new(25);
        let mut objective = rrr(1.0);
        assert!(objective.requires_saliency());
        let adapter = LinearModel {
            weight: fx.weight.copy(),
            bias: fx.bias.copy(),
        }
        .training_model();
        let model_ref = adapter.as_ref();
        let model = TrainingModel::new(&model_ref);
        let bare = Batch::new(&fx.images, &fx.labels, 0, 1, Phase::Training);
        let e = objective.loss(&bare, &fx.inputs, model).unwrap_err();
        assert!(e.message.contains("saliency"), "{e}");
        let wrong = fx.saliency.narrow(2, 0, 2);
        let e = objective
            .loss(&bare.with_saliency(&wrong), &fx.inputs, model)
            .unwrap_err();
        assert!(e.message.contains("[N, 1 or C, H, W]"), "{e}");
    }

    #[test]
    fn config_is_checked() {
        assert!(config_error("rrr", "lambda = -0.5").contains("[rrr] lambda"));
        assert!(config_error("rrr", "lambda = -0.5").contains(">= 0"));
        assert!(config_error("rrr", "lamda = 1.0").contains("lamda"));
    }

    #[test]
    fn inputs_are_not_modified() {
        let _rng = rng_lock();
        Fixture::new(26).assert_inputs_untouched(&mut rrr(10.0));
    }
}
