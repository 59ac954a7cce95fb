//! Projected gradient descent (Madry et al.), ℓ∞ or ℓ2, with random start and restarts.
use crate::ball::{ascent_direction, project, random_start};
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The norm as written in configs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NormName {
    /// ℓ∞.
    Linf,
    /// ℓ2.
    L2,
}

impl From<NormName> for Norm {
    fn from(n: NormName) -> Self {
        match n {
            NormName::Linf => Norm::Linf,
            NormName::L2 => Norm::L2,
        }
    }
}

/// Configuration of `pgd`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgdConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Step size.
    pub step_size: Epsilon,
    /// Number of gradient steps.
    pub steps: u32,
    /// Start from a random point in the ball (otherwise from the image).
    pub random_start: bool,
    /// Number of restarts; per sample the result with the highest loss is kept.
    pub restarts: u32,
}

impl Default for PgdConfig {
    fn default() -> Self {
        Self {
            norm: NormName::Linf,
            epsilon: Epsilon(8.0 / 255.0),
            step_size: Epsilon(2.0 / 255.0),
            steps: 10,
            random_start: true,
            restarts: 1,
        }
    }
}

/// PGD on the cross-entropy loss.
pub struct Pgd {
    config: PgdConfig,
}

impl Configurable for Pgd {
    type Config = PgdConfig;
    fn from_config(config: PgdConfig) -> Result<Self, PluginError> {
        if config.restarts == 0 {
            return Err(PluginError::config("[pgd] restarts must be at least 1"));
        }
        Ok(Self { config })
    }
}

impl Pgd {
    /// One PGD run from a (random or clean) start; returns the adversarial inputs.
    fn run(
        &self,
        x: &Tensor,
        labels: &Tensor,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        let c = &self.config;
        let (norm, eps) = (Norm::from(c.norm), c.epsilon.0);
        let mut adv = if c.random_start {
            random_start(x, norm, eps)?
        } else {
            x.f_detach_copy()?
        };
        for _ in 0..c.steps {
            let g = oracle.input_gradient(&adv, Objective::cross_entropy(labels))?;
            let step =
                adv.f_add(&ascent_direction(&g.gradient, norm)?.f_mul_scalar(c.step_size.0)?)?;
            adv = project(&step, x, norm, eps)?;
        }
        Ok(adv)
    }
}

impl Attack for Pgd {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: self.config.norm.into(),
            epsilon: self.config.epsilon.0,
            steps: self.config.steps,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let (x, labels) = (batch.images(), batch.labels());
        let mut best = self.run(&x, &labels, oracle)?;
        if self.config.restarts == 1 {
            // One run: no loss to compare, no extra forward pass.
            return Ok(best.f_to_kind(Kind::Float)?);
        }
        let loss_of = |adv: &Tensor| -> Result<Tensor, PluginError> {
            Ok(oracle.logits(adv)?.f_cross_entropy_loss::<Tensor>(
                &labels,
                None,
                tch::Reduction::None,
                -100,
                0.0,
            )?)
        };
        let mut best_loss = loss_of(&best)?;
        for _ in 1..self.config.restarts {
            let adv = self.run(&x, &labels, oracle)?;
            let loss = loss_of(&adv)?;
            let better = loss.f_gt_tensor(&best_loss)?;
            let mut shape = vec![-1i64];
            shape.extend(std::iter::repeat_n(1, x.dim() - 1));
            best = adv.f_where_self(&better.f_reshape(shape)?, &best)?;
            best_loss = loss.f_where_self(&better, &best_loss)?;
        }
        Ok(best.f_to_kind(Kind::Float)?)
    }
}

sat_core::register_attack!(
    Pgd,
    name = "pgd",
    description = "PGD on cross-entropy, linf or l2, random start, restarts",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ball::per_sample_l2;
    use sat_core::{testing::LinearModel, Phase};
    use tch::Device;

    fn setup() -> (sat_core::OracleAdapter<LinearModel>, Tensor, Tensor) {
        let adapter = LinearModel::random(5, 48, 11).oracle();
        let x = Tensor::rand([6, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0]);
        (adapter, x, y)
    }

    #[test]
    fn linf_and_l2_stay_in_ball_and_box_and_raise_the_loss() {
        let _generator = crate::tests::generator();
        for (norm, eps) in [("linf", 8.0 / 255.0), ("l2", 0.5)] {
            let (adapter, x, y) = setup();
            let oracle_ref = adapter.as_ref();
            let oracle = Oracle::new(&oracle_ref);
            let before = x.copy();
            let text = format!(
                "norm = \"{norm}\"\nepsilon = {eps}\nstep_size = {}\nsteps = 5",
                eps / 4.0
            );
            let mut pgd = Pgd::from_config(sat_core::parse_config("pgd", &text).unwrap()).unwrap();
            let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
            let adv = pgd.perturb(&batch, oracle).unwrap();
            let delta = &adv - &x;
            let size = if norm == "linf" {
                delta.abs().max()
            } else {
                per_sample_l2(&delta).unwrap().max()
            };
            assert!(
                size.double_value(&[]) <= eps + 1e-5,
                "{norm}: {}",
                size.double_value(&[])
            );
            assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
            assert!(x.equal(&before), "input unchanged");
            let ce = |t: &Tensor| {
                oracle
                    .logits(t)
                    .unwrap()
                    .cross_entropy_for_logits(&y)
                    .double_value(&[])
            };
            assert!(ce(&adv) > ce(&x), "{norm}: loss must rise");
        }
    }

    #[test]
    fn batched_result_equals_per_sample_result_without_random_start() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let config = PgdConfig {
            random_start: false,
            steps: 4,
            ..PgdConfig::default()
        };
        let mut pgd = Pgd::from_config(config).unwrap();
        let all = pgd
            .perturb(&Batch::new(&x, &y, 0, 1, Phase::Evaluation), oracle)
            .unwrap();
        for i in 0..6 {
            let xi = x.narrow(0, i, 1);
            let yi = y.narrow(0, i, 1);
            let one = pgd
                .perturb(&Batch::new(&xi, &yi, 0, 1, Phase::Evaluation), oracle)
                .unwrap();
            assert!(
                one.allclose(&all.narrow(0, i, 1), 1e-6, 1e-6, false),
                "sample {i}"
            );
        }
    }

    /// An oracle that checks every point it is queried at: PGD queries each iterate.
    struct Watchful {
        model: LinearModel,
        origin: Tensor,
        norm: Norm,
        epsilon: f64,
        queries: std::cell::Cell<usize>,
    }

    impl sat_core::OracleBackend for Watchful {
        fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
            self.model.logits(images)
        }
        fn input_gradient(
            &self,
            images: &Tensor,
            objective: &Objective,
        ) -> Result<sat_core::Gradient, PluginError> {
            let delta = images - &self.origin;
            let size = match self.norm {
                Norm::Linf => delta.abs().max(),
                Norm::L2 => per_sample_l2(&delta).unwrap().max(),
            }
            .double_value(&[]);
            assert!(
                size <= self.epsilon + 1e-5,
                "iterate {} outside the ball: {size}",
                self.queries.get()
            );
            assert!(images.min().double_value(&[]) >= 0.0 && images.max().double_value(&[]) <= 1.0);
            self.queries.set(self.queries.get() + 1);
            self.model.input_gradient(images, objective)
        }
        fn num_classes(&self) -> u32 {
            self.model.num_classes()
        }
    }

    #[test]
    fn every_iterate_is_in_the_ball_and_the_box() {
        let _generator = crate::tests::generator();
        for (norm, name, eps) in [(Norm::Linf, "linf", 8.0 / 255.0), (Norm::L2, "l2", 0.5)] {
            let x = Tensor::rand([6, 3, 4, 4], (Kind::Float, Device::Cpu));
            let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0]);
            let watch = Watchful {
                model: LinearModel::random(5, 48, 11),
                origin: x.copy(),
                norm,
                epsilon: eps,
                queries: std::cell::Cell::new(0),
            };
            let adapter = sat_core::OracleAdapter(watch);
            let oracle_ref = adapter.as_ref();
            // A large step so that unprojected iterates would leave the ball.
            let text = format!(
                "norm = \"{name}\"\nepsilon = {eps}\nstep_size = {}\nsteps = 6\nrestarts = 2",
                eps * 2.0
            );
            let mut pgd = Pgd::from_config(sat_core::parse_config("pgd", &text).unwrap()).unwrap();
            let _adversarial = pgd
                .perturb(
                    &Batch::new(&x, &y, 0, 1, Phase::Evaluation),
                    Oracle::new(&oracle_ref),
                )
                .unwrap();
            assert_eq!(
                adapter.0.queries.get(),
                12,
                "{name}: 6 steps x 2 restarts checked"
            );
        }
    }

    #[test]
    fn zero_restarts_is_a_config_error() {
        let _generator = crate::tests::generator();
        let e = Pgd::from_config(PgdConfig {
            restarts: 0,
            ..PgdConfig::default()
        })
        .err()
        .unwrap();
        assert!(e.message.contains("restarts"));
    }
}
