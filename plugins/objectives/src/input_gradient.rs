//! Input-gradient regularisation (Ross & Doshi-Velez 2018, "double backpropagation"):
//! cross-entropy plus the squared norm of its own input gradient.
use crate::terms::{mean_squared_norm, weight};
use sat_core::{
    component::Configurable, Batch, Loss, Objective, PluginError, TrainingModel, TrainingObjective,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `input-gradient`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputGradientConfig {
    /// λ ≥ 0, the weight of `‖∇ₓ CE‖²`. The default, 1, keeps the penalty at or below
    /// the cross-entropy's scale for a reasonably smooth model on 32×32×3 images in
    /// `[0, 1]` (a gradient whose ℓ1 norm is ~30, i.e. a loss rise of ~1 under an 8/255
    /// FGSM step, has ‖·‖² ≈ 0.3), while penalising the large gradients of an
    /// unregularised model (‖·‖² in the tens) strongly. Tune it per dataset.
    pub lambda: f64,
}

impl Default for InputGradientConfig {
    fn default() -> Self {
        Self { lambda: 1.0 }
    }
}

/// `CE(f(x'), y) + λ·mean_n ‖∇ₓ CE_n(x')‖²`, with the gradient's graph kept so the
/// penalty trains the parameters.
pub struct InputGradient {
    config: InputGradientConfig,
}

impl Configurable for InputGradient {
    type Config = InputGradientConfig;
    fn from_config(config: InputGradientConfig) -> Result<Self, PluginError> {
        weight("input-gradient", "lambda", config.lambda)?;
        Ok(Self { config })
    }
}

impl TrainingObjective for InputGradient {
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError> {
        let g = model.input_gradient(inputs, Objective::cross_entropy(&batch.labels()))?;
        let penalty = mean_squared_norm(&g.gradient)?;
        let value = g
            .value
            .f_mean(g.value.kind())?
            .f_add(&penalty.f_mul_scalar(self.config.lambda)?)?;
        Ok(Loss {
            value,
            logits: g.logits,
        })
    }
}

sat_core::register_objective!(
    InputGradient,
    name = "input-gradient",
    description = "input-gradient regularisation (double backprop): CE + lambda * |grad_x CE|^2",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config_error, mean_squared_norm, rng_lock, Fixture};

    fn regularised(lambda: f64) -> InputGradient {
        InputGradient::from_config(InputGradientConfig { lambda }).unwrap()
    }

    #[test]
    fn zero_lambda_is_cross_entropy() {
        let _rng = rng_lock();
        Fixture::new(31).assert_zero_weight_is_ce(&mut regularised(0.0), false);
    }

    #[test]
    fn penalty_matches_closed_form() {
        let _rng = rng_lock();
        let fx = Fixture::new(32);
        let expected = mean_squared_norm(&fx.ce_input_gradient(&fx.inputs));
        fx.assert_penalty(
            &mut regularised(2.5),
            &mut regularised(0.0),
            2.5,
            expected,
            0,
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let _rng = rng_lock();
        Fixture::new(33).assert_finite_differences(&mut regularised(1.0), 0);
    }

    #[test]
    fn config_is_checked() {
        let e = config_error("input-gradient", "lambda = -1.0");
        assert!(
            e.contains("[input-gradient] lambda") && e.contains(">= 0"),
            "{e}"
        );
        assert!(config_error("input-gradient", "beta = 1.0").contains("beta"));
    }

    #[test]
    fn inputs_are_not_modified() {
        let _rng = rng_lock();
        Fixture::new(34).assert_inputs_untouched(&mut regularised(1.0));
    }
}
