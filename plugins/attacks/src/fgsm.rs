//! FGSM (Goodfellow et al.) and FGSM with a random start ("fast is better than free").
//! `fgsm` can be targeted: one signed step down the cross-entropy of the target class.
use crate::ball::{ascent_direction, random_start, step_and_project};
use crate::pgd::choose_targets;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError, Target,
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
    /// The class to push each image towards (`"none"`: untargeted).
    pub target: Target,
}

impl Default for FgsmConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
            target: Target::None,
        }
    }
}

/// One signed-gradient step of size ε: `x + ε·sign(∇ₓ CE(label))`, or, targeted,
/// `x − ε·sign(∇ₓ CE(target))`, clamped to `[0, 1]`.
pub struct Fgsm {
    config: FgsmConfig,
    /// The targets of the last batch (targeted only).
    targets: Option<Tensor>,
}

impl Configurable for Fgsm {
    type Config = FgsmConfig;
    fn from_config(config: FgsmConfig) -> Result<Self, PluginError> {
        Ok(Self {
            config,
            targets: None,
        })
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
        let (x, labels) = (batch.images(), batch.labels());
        self.targets = choose_targets(self.config.target, &x, &labels, oracle)?;
        let eps = self.config.epsilon.0;
        // Up the label's loss, or down the target's.
        let (classes, step_size) = match &self.targets {
            None => (labels.shallow_clone(), eps),
            Some(t) => (t.shallow_clone(), -eps),
        };
        let g = oracle.input_gradient(&x, Objective::cross_entropy(&classes))?;
        let direction = ascent_direction(&g.gradient, Norm::Linf)?;
        step_and_project(direction, step_size, &x, &x, (Norm::Linf, eps))
    }
    fn targets(&self) -> Option<Tensor> {
        self.targets.as_ref().map(Tensor::shallow_clone)
    }
}

sat_core::register_attack!(
    Fgsm,
    name = "fgsm",
    description = "FGSM: one signed-gradient step of size epsilon (linf), optionally targeted",
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
        let start = random_start(batch.draws(), "fgsm-rs.start", &x, Norm::Linf, eps)?;
        let g = oracle.input_gradient(&start, Objective::cross_entropy(&batch.labels()))?;
        let direction = ascent_direction(&g.gradient, Norm::Linf)?;
        step_and_project(
            direction,
            self.config.step_size.0,
            &start,
            &x,
            (Norm::Linf, eps),
        )
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
    use crate::ball::project;
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
        assert!(fgsm.targets().is_none(), "untargeted reports no targets");
    }

    /// The untargeted step as it was computed before `target` existed.
    fn reference_fgsm(x: &Tensor, y: &Tensor, eps: f64, oracle: Oracle<'_, '_>) -> Tensor {
        let g = oracle
            .input_gradient(x, Objective::cross_entropy(y))
            .unwrap();
        let step = x + ascent_direction(&g.gradient, Norm::Linf).unwrap() * eps;
        project(&step, x, Norm::Linf, eps).unwrap()
    }

    #[test]
    fn untargeted_fgsm_is_unchanged_bit_for_bit() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(4, 48, 9).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let x = Tensor::rand([8, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let mut fgsm = Fgsm::from_config(FgsmConfig::default()).unwrap();
        let adv = fgsm.perturb(&batch, oracle).unwrap();
        assert!(adv.equal(&reference_fgsm(&x, &y, 8.0 / 255.0, oracle)));
    }

    #[test]
    fn targeted_fgsm_descends_the_target_loss_in_closed_form() {
        let _generator = crate::tests::generator();
        // CE(t) of a linear model has gradient Σₖ pₖ wₖ − w_t: the step is its negative sign.
        let model = LinearModel::random(3, 12, 4);
        let (w, b) = (model.weight.copy(), model.bias.copy());
        let adapter = model.oracle();
        let oracle_ref = adapter.as_ref();
        let x = Tensor::full([1, 3, 2, 2], 0.5, (Kind::Float, Device::Cpu));
        let before = x.copy();
        let y = Tensor::from_slice(&[0i64]);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let config = FgsmConfig {
            target: Target::Class(2),
            ..FgsmConfig::default()
        };
        let mut fgsm = Fgsm::from_config(config).unwrap();
        let adv = fgsm.perturb(&batch, Oracle::new(&oracle_ref)).unwrap();
        let p = (x.flatten(1, -1).matmul(&w.tr()) + &b).softmax(-1, Kind::Float);
        let gradient = p.matmul(&w) - w.get(2);
        let expected = &x - gradient.sign().reshape([1, 3, 2, 2]) * (8.0 / 255.0);
        assert!(adv.allclose(&expected, 1e-6, 1e-6, false));
        assert!(x.equal(&before), "the input is not modified");
        let t = fgsm.targets().expect("targets of a targeted attack");
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![2]);
    }

    #[test]
    fn targeted_fgsm_hits_its_targets_more_often_than_untargeted_fgsm() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(5, 48, 13).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        tch::manual_seed(2);
        let x = Tensor::rand([64, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = oracle.logits(&x).unwrap().argmax(-1, false);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        // One step: large enough to reach the least likely class on some images.
        let eps = 0.2;
        let attack = |target| {
            let config = FgsmConfig {
                epsilon: Epsilon(eps),
                target,
            };
            let mut fgsm = Fgsm::from_config(config).unwrap();
            let adv = fgsm.perturb(&batch, oracle).unwrap();
            assert!((&adv - &x).abs().max().double_value(&[]) <= eps + 1e-6);
            assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
            (adv, fgsm.targets())
        };
        let (targeted, targets) = attack(Target::LeastLikely);
        let targets = targets.expect("least-likely targets");
        assert_eq!(targets.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]), 0);
        let (untargeted, _) = attack(Target::None);
        let hits = |adv: &Tensor| {
            oracle
                .logits(adv)
                .unwrap()
                .argmax(-1, false)
                .eq_tensor(&targets)
                .sum(Kind::Int64)
                .int64_value(&[])
        };
        let (t, u) = (hits(&targeted), hits(&untargeted));
        assert!(t > u, "targeted {t} vs untargeted {u} of 64 on the target");
        assert!(t > 0);
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
