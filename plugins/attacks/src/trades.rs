//! TRADES' inner maximisation (Zhang et al., 2019): sign ascent on
//! `KL(f(x) ‖ f(x'))` from `x' = x + 0.001·N(0, I)`, projected onto the ℓ∞ ball.
//! The TRADES loss itself (`CE(f(x), y) + β·KL`) is the trainer's (`[train] loss`).
use crate::ball::{ascent_direction, project};
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `trades`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TradesConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
    /// Step size.
    pub step_size: Epsilon,
    /// Ascent steps.
    pub steps: u32,
}

impl Default for TradesConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
            step_size: Epsilon(2.0 / 255.0),
            steps: 10,
        }
    }
}

/// The TRADES attack.
pub struct Trades {
    config: TradesConfig,
}

impl Configurable for Trades {
    type Config = TradesConfig;
    fn from_config(config: TradesConfig) -> Result<Self, PluginError> {
        crate::ranges::check("trades", &[("steps", config.steps)])?;
        Ok(Self { config })
    }
}

impl Attack for Trades {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: self.config.steps,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let x = batch.images();
        let eps = self.config.epsilon.0;
        let reference = oracle.logits(&x)?;
        let start = x.f_add(
            &batch
                .draws()
                .normal_like("trades.start", &x)?
                .f_mul_scalar(0.001)?,
        )?;
        let mut adv = project(&start, &x, Norm::Linf, eps)?;
        for _ in 0..self.config.steps {
            let g = oracle.input_gradient(&adv, Objective::kl_divergence(&reference))?;
            let step = adv.f_add(
                &ascent_direction(&g.gradient, Norm::Linf)?
                    .f_mul_scalar(self.config.step_size.0)?,
            )?;
            adv = project(&step, &x, Norm::Linf, eps)?;
        }
        Ok(adv)
    }
}

sat_core::register_attack!(
    Trades,
    name = "trades",
    description =
        "TRADES inner maximisation: sign ascent on KL(f(x) || f(x')) from x + 0.001 N(0, I)",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::{Device, Kind};

    #[test]
    fn raises_the_kl_and_stays_in_the_ball() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(4, 48, 2).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let x = Tensor::rand([5, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::zeros([5], (Kind::Int64, Device::Cpu));
        let mut trades = Trades::from_config(TradesConfig {
            steps: 5,
            ..TradesConfig::default()
        })
        .unwrap();
        let adv = trades
            .perturb(&Batch::new(&x, &y, 0, 1, Phase::Training), oracle)
            .unwrap();
        assert!((&adv - &x).abs().max().double_value(&[]) <= 8.0 / 255.0 + 1e-6);
        assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
        let kl = sat_core::objective_value(
            &oracle.logits(&adv).unwrap(),
            &Objective::kl_divergence(&oracle.logits(&x).unwrap()),
        )
        .unwrap()
        .sum(Kind::Float)
        .double_value(&[]);
        assert!(kl > 1e-4, "the divergence grows from ~0: {kl}");
    }
}
