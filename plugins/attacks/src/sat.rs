//! SAT: saliency-based perturbations with no gradient steps (Mangla et al., 2020).
//!
//! Per batch at epoch `t` (0-based): `r = ±1` uniformly per element,
//! `p_t = 1 − a^(t/period)`, `w ~ Bernoulli(p_t)` per element,
//! `g = (1 − w)·r + w·S(x)` and `x̃ = clip₍₀,₁₎(x − ε·g)`.
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Oracle, PluginError, ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `sat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SatConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
    /// Curriculum base `a ∈ (0, 1]`.
    pub base: f64,
    /// Epochs per power of `a` (10 in the paper).
    pub period: f64,
    /// A fixed mixing probability in `[0, 1]` instead of the curriculum (unset: the
    /// curriculum).
    pub probability: Option<f64>,
}

impl Default for SatConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
            base: 0.6,
            period: 10.0,
            probability: None,
        }
    }
}

/// The SAT perturbation.
pub struct Sat {
    config: SatConfig,
}

impl Configurable for Sat {
    type Config = SatConfig;
    fn from_config(config: SatConfig) -> Result<Self, PluginError> {
        if !(config.base > 0.0 && config.base <= 1.0) {
            return Err(PluginError::config(format!(
                "[sat] base must be in (0, 1], got {}",
                config.base
            )));
        }
        if config.period.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(PluginError::config(format!(
                "[sat] period must be positive, got {}",
                config.period
            )));
        }
        if let Some(p) = config.probability.filter(|p| !(0.0..=1.0).contains(p)) {
            return Err(PluginError::config(format!(
                "[sat] probability must be in [0, 1] (or left unset for the curriculum), got {p}"
            )));
        }
        Ok(Self { config })
    }
}

impl Sat {
    /// The probability of taking the saliency map at 0-based `epoch`.
    pub fn probability(&self, epoch: u32) -> f64 {
        match self.config.probability {
            Some(p) => p,
            None => 1.0 - self.config.base.powf(epoch as f64 / self.config.period),
        }
    }
}

impl Attack for Sat {
    fn requires_saliency(&self) -> bool {
        true
    }
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: 0,
        }
    }
    fn perturb(&mut self, batch: &Batch, _oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let x = batch.images();
        let saliency = batch.saliency().ok_or_else(|| {
            PluginError::invalid_input("sat needs a saliency map: configure a saliency source")
        })?;
        let s = saliency.f_expand_as(&x)?.f_to_kind(Kind::Float)?;
        // g = (1 − w)·r + w·s with w ∈ {0, 1}: a selection, not arithmetic. Few
        // operations, since on CUDA each is a kernel launch on every batch.
        let eps = self.config.epsilon.0;
        let draws = batch.draws();
        let signs =
            Tensor::f_where_scalar(&draws.uniform_like("sat.sign", &x)?.f_lt(0.5)?, eps, -eps)?;
        let w = draws
            .uniform_like("sat.mix", &x)?
            .f_lt(self.probability(batch.epoch))?;
        let mut step = s.f_mul_scalar(eps)?.f_where_self(&w, &signs)?;
        let _ = step.f_neg_()?.f_add_(&x)?.f_clamp_(0.0, 1.0)?;
        Ok(step)
    }
}

sat_core::register_attack!(
    Sat,
    name = "sat",
    description = "SAT: x - epsilon * mix(random signs, saliency map), curriculum p_t = 1 - a^(t/10); no gradients",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::Device;

    fn run(probability: f64, x: &Tensor, s: &Tensor) -> Tensor {
        let adapter = LinearModel::random(2, 3 * 8 * 8, 1).oracle();
        let oracle_ref = adapter.as_ref();
        let y = Tensor::zeros([x.size()[0]], (Kind::Int64, Device::Cpu));
        let batch = Batch::new(x, &y, 3, 10, Phase::Training).with_saliency(s);
        let mut sat = Sat::from_config(SatConfig {
            probability: Some(probability),
            ..SatConfig::default()
        })
        .unwrap();
        sat.perturb(&batch, Oracle::new(&oracle_ref)).unwrap()
    }

    #[test]
    fn p0_is_pure_random_signs_and_p1_is_minus_eps_saliency() {
        let _generator = crate::tests::generator();
        let eps = 8.0 / 255.0;
        // Mid-grey images so clamping never bites.
        let x = Tensor::full([4, 3, 8, 8], 0.5, (Kind::Float, Device::Cpu));
        let s = Tensor::rand([4, 1, 8, 8], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let d0 = (run(0.0, &x, &s) - &x) / eps;
        assert!(
            (d0.abs() - 1.0).abs().max().double_value(&[]) < 1e-4,
            "p=0: every element ±eps"
        );
        let mean = d0.mean(Kind::Float).double_value(&[]);
        assert!(mean.abs() < 0.1, "random signs are balanced, mean {mean}");
        let d1 = run(1.0, &x, &s) - &x;
        let expected = (&s * -eps).expand_as(&x);
        assert!(d1.allclose(&expected, 1e-5, 1e-6, false), "p=1: x - eps*S");
    }

    #[test]
    fn output_is_clamped_to_the_image_box() {
        let _generator = crate::tests::generator();
        let x = Tensor::ones([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let s = -Tensor::ones([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        let adv = run(1.0, &x, &s);
        assert!(adv.max().double_value(&[]) <= 1.0);
    }

    #[test]
    fn curriculum_follows_the_formula() {
        let _generator = crate::tests::generator();
        let sat = Sat::from_config(SatConfig::default()).unwrap();
        assert_eq!(sat.probability(0), 0.0);
        assert!((sat.probability(10) - 0.4).abs() < 1e-12);
        assert!((sat.probability(20) - 0.64).abs() < 1e-12);
        assert!((sat.probability(5) - (1.0 - 0.6f64.powf(0.5))).abs() < 1e-12);
    }

    #[test]
    fn missing_saliency_and_bad_config_are_errors() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(2, 12, 1).oracle();
        let oracle_ref = adapter.as_ref();
        let x = Tensor::rand([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        let mut sat = Sat::from_config(SatConfig::default()).unwrap();
        let err = sat
            .perturb(
                &Batch::new(&x, &y, 0, 1, Phase::Training),
                Oracle::new(&oracle_ref),
            )
            .unwrap_err();
        assert!(err.message.contains("saliency"));
        assert!(Sat::from_config(SatConfig {
            base: 0.0,
            ..SatConfig::default()
        })
        .is_err());
        assert!(Sat::from_config(SatConfig {
            probability: Some(2.0),
            ..SatConfig::default()
        })
        .is_err());
    }
}
