//! FGSM (Goodfellow et al.) and FGSM with a random start ("fast is better than free").
use crate::ball::{ascent_direction, project, random_start};
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `fgsm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FgsmConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
}

impl Default for FgsmConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
        }
    }
}

/// One signed-gradient step of size ε: `x + ε·sign(∇ₓ CE)`, clamped to `[0, 1]`.
pub struct Fgsm {
    config: FgsmConfig,
}

impl Configurable for Fgsm {
    type Config = FgsmConfig;
    fn from_config(config: FgsmConfig) -> Result<Self, PluginError> {
        Ok(Self { config })
    }
}

impl Attack for Fgsm {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: 1,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let x = batch.images();
        let g = oracle.input_gradient(&x, Objective::cross_entropy(&batch.labels()))?;
        let eps = self.config.epsilon.0;
        let step = x.f_add(&ascent_direction(&g.gradient, Norm::Linf)?.f_mul_scalar(eps)?)?;
        project(&step, &x, Norm::Linf, eps)
    }
}

sat_core::register_attack!(
    Fgsm,
    name = "fgsm",
    description = "FGSM: one signed-gradient step of size epsilon (linf)",
);

/// Configuration of `fgsm-rs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FgsmRsConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
    /// Step size α.
    pub step_size: Epsilon,
}

impl Default for FgsmRsConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
            step_size: Epsilon(10.0 / 255.0),
        }
    }
}

/// FGSM from a uniform random start in the ε-ball, with step α, projected back.
pub struct FgsmRs {
    config: FgsmRsConfig,
}

impl Configurable for FgsmRs {
    type Config = FgsmRsConfig;
    fn from_config(config: FgsmRsConfig) -> Result<Self, PluginError> {
        Ok(Self { config })
    }
}

impl Attack for FgsmRs {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: 1,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let x = batch.images();
        let eps = self.config.epsilon.0;
        let start = random_start(&x, Norm::Linf, eps)?;
        let g = oracle.input_gradient(&start, Objective::cross_entropy(&batch.labels()))?;
        let step = start.f_add(
            &ascent_direction(&g.gradient, Norm::Linf)?.f_mul_scalar(self.config.step_size.0)?,
        )?;
        project(&step, &x, Norm::Linf, eps)
    }
}

sat_core::register_attack!(
    FgsmRs,
    name = "fgsm-rs",
    description = "FGSM with a uniform random start and step alpha (fast adversarial training)",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::{Device, Kind};

    #[test]
    fn fgsm_on_a_linear_model_is_the_closed_form() {
        let _generator = crate::tests::generator();
        // For a 2-class linear model, CE of class 0 grows along w1 - w0.
        let model = LinearModel::random(2, 12, 3);
        let direction = (model.weight.get(1) - model.weight.get(0))
            .sign()
            .reshape([1, 3, 2, 2]);
        let adapter = model.oracle();
        let oracle_ref = adapter.as_ref();
        let x = Tensor::full([1, 3, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        let before = x.copy();
        let y = Tensor::from_slice(&[0i64]);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let mut fgsm = Fgsm::from_config(FgsmConfig::default()).unwrap();
        let adv = fgsm.perturb(&batch, Oracle::new(&oracle_ref)).unwrap();
        let expected = &x + direction * (8.0 / 255.0);
        assert!(adv.allclose(&expected, 1e-6, 1e-6, false));
        assert!(x.equal(&before), "the input is not modified");
    }

    #[test]
    fn fgsm_rs_stays_in_the_ball_and_box() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(4, 48, 5).oracle();
        let oracle_ref = adapter.as_ref();
        let x = Tensor::rand([8, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Training);
        let mut attack = FgsmRs::from_config(FgsmRsConfig::default()).unwrap();
        let adv = attack.perturb(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert!((&adv - &x).abs().max().double_value(&[]) <= 8.0 / 255.0 + 1e-6);
        assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
    }
}
