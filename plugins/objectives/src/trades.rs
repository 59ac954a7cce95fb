//! TRADES (Zhang et al. 2019): cross-entropy on the clean images plus β times the KL
//! divergence from the clean prediction to the prediction on the attack's inputs.
use crate::terms::{mean_cross_entropy, weight};
use sat_core::{
    component::Configurable, objective_value, Batch, Loss, Objective, PluginError, TrainingModel,
    TrainingObjective,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `trades`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TradesConfig {
    /// β ≥ 0, the weight of the KL term (6 in the paper for CIFAR-10; 1 is common with SAT).
    pub beta: f64,
}

impl Default for TradesConfig {
    fn default() -> Self {
        Self { beta: 6.0 }
    }
}

/// `CE(f(x), y) + β·mean_n KL(softmax f(x) ‖ softmax f(x'))`, `x` the clean images and
/// `x'` the inputs; gradients flow through both forward passes.
pub struct Trades {
    config: TradesConfig,
}

impl Configurable for Trades {
    type Config = TradesConfig;
    fn from_config(config: TradesConfig) -> Result<Self, PluginError> {
        weight("trades", "beta", config.beta)?;
        Ok(Self { config })
    }
}

impl TrainingObjective for Trades {
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError> {
        let clean = model.forward(&batch.images())?;
        let logits = model.forward(inputs)?;
        let kl = objective_value(&logits, &Objective::kl_divergence(&clean))?;
        let value = mean_cross_entropy(&clean, &batch.labels())?
            .f_add(&kl.f_mean(kl.kind())?.f_mul_scalar(self.config.beta)?)?;
        Ok(Loss { value, logits })
    }
}

sat_core::register_objective!(
    Trades,
    name = "trades",
    description = "TRADES: CE on the clean images + beta * KL(f(x) || f(inputs))",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{config_error, rng_lock, Fixture};
    use tch::Kind;

    fn trades(beta: f64) -> Trades {
        Trades::from_config(TradesConfig { beta }).unwrap()
    }

    #[test]
    fn zero_beta_is_clean_cross_entropy() {
        let _rng = rng_lock();
        Fixture::new(11).assert_zero_weight_is_ce(&mut trades(0.0), true);
    }

    #[test]
    fn kl_term_matches_closed_form() {
        let _rng = rng_lock();
        let fx = Fixture::new(12);
        let (p, q) = (fx.probabilities(&fx.images), fx.probabilities(&fx.inputs));
        let kl = (&p * (p.log() - q.log()))
            .sum_dim_intlist(-1, false, Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        fx.assert_penalty(&mut trades(2.5), &mut trades(0.0), 2.5, kl, 0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let _rng = rng_lock();
        Fixture::new(13).assert_finite_differences(&mut trades(6.0), 0);
    }

    #[test]
    fn config_is_checked() {
        assert!(config_error("trades", "beta = -1.0").contains("[trades] beta"));
        assert!(config_error("trades", "betta = 1.0").contains("betta"));
    }

    #[test]
    fn inputs_are_not_modified() {
        let _rng = rng_lock();
        Fixture::new(14).assert_inputs_untouched(&mut trades(6.0));
    }
}
