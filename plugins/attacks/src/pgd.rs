//! Projected gradient descent (Madry et al.), ℓ∞ or ℓ2, with random start and restarts;
//! untargeted (ascent on the label's cross-entropy) or targeted (descent on the target's).
use crate::ball::{ascent_direction, random_start, step_and_project};
use sat_core::{
    component::Configurable, Attack, Batch, Draws, Epsilon, Norm, Objective, Oracle, PluginError,
    Target, ThreatModel,
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
    /// Number of restarts; per sample the result with the highest loss (targeted: the
    /// lowest target loss) is kept.
    pub restarts: u32,
    /// The class to push each image towards (`"none"`: untargeted).
    pub target: Target,
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
            target: Target::None,
        }
    }
}

/// The targets of a batch under `target`, chosen from the clean logits of `x` (no
/// oracle call when untargeted).
pub(crate) fn choose_targets(
    target: Target,
    x: &Tensor,
    labels: &Tensor,
    oracle: Oracle<'_, '_>,
) -> Result<Option<Tensor>, PluginError> {
    if !target.is_targeted() {
        return Ok(None);
    }
    target.choose(&oracle.logits(x)?, labels)
}

/// PGD on the cross-entropy loss.
pub struct Pgd {
    config: PgdConfig,
    /// The targets of the last batch (targeted only).
    targets: Option<Tensor>,
}

impl Configurable for Pgd {
    type Config = PgdConfig;
    fn from_config(config: PgdConfig) -> Result<Self, PluginError> {
        crate::ranges::check(
            "pgd",
            &[("steps", config.steps), ("restarts", config.restarts)],
        )?;
        Ok(Self {
            config,
            targets: None,
        })
    }
}

impl Pgd {
    /// One PGD run from a (random or clean) start; returns the adversarial inputs. Steps
    /// go up the cross-entropy of `classes` (the labels), or down it when `descend`
    /// (the targets).
    fn run(
        &self,
        x: &Tensor,
        classes: &Tensor,
        descend: bool,
        oracle: Oracle<'_, '_>,
        start: (Draws<'_>, u32),
    ) -> Result<Tensor, PluginError> {
        let c = &self.config;
        let (norm, eps) = (Norm::from(c.norm), c.epsilon.0);
        let step_size = if descend {
            -c.step_size.0
        } else {
            c.step_size.0
        };
        let mut adv = if c.random_start {
            let (draws, restart) = start;
            random_start(draws, &format!("pgd.start.{restart}"), x, norm, eps)?
        } else {
            x.f_detach_copy()?
        };
        for _ in 0..c.steps {
            let g = oracle.input_gradient(&adv, Objective::cross_entropy(classes))?;
            let direction = ascent_direction(&g.gradient, norm)?;
            adv = step_and_project(direction, step_size, &adv, x, (norm, eps))?;
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
        self.targets = choose_targets(self.config.target, &x, &labels, oracle)?;
        let (classes, descend) = match &self.targets {
            None => (labels.shallow_clone(), false),
            Some(t) => (t.shallow_clone(), true),
        };
        let draws = batch.draws();
        let mut best = self.run(&x, &classes, descend, oracle, (draws, 0))?;
        if self.config.restarts == 1 {
            // One run: no loss to compare, no extra forward pass.
            return Ok(best.f_to_kind(Kind::Float)?);
        }
        let loss_of = |adv: &Tensor| -> Result<Tensor, PluginError> {
            Ok(oracle.logits(adv)?.f_cross_entropy_loss::<Tensor>(
                &classes,
                None,
                tch::Reduction::None,
                -100,
                0.0,
            )?)
        };
        let mut best_loss = loss_of(&best)?;
        for restart in 1..self.config.restarts {
            let adv = self.run(&x, &classes, descend, oracle, (draws, restart))?;
            let loss = loss_of(&adv)?;
            // Untargeted: the highest label loss wins; targeted: the lowest target loss.
            let better = if descend {
                loss.f_lt_tensor(&best_loss)?
            } else {
                loss.f_gt_tensor(&best_loss)?
            };
            let mut shape = vec![-1i64];
            shape.extend(std::iter::repeat_n(1, x.dim() - 1));
            best = adv.f_where_self(&better.f_reshape(shape)?, &best)?;
            best_loss = loss.f_where_self(&better, &best_loss)?;
        }
        Ok(best.f_to_kind(Kind::Float)?)
    }
    fn targets(&self) -> Option<Tensor> {
        self.targets.as_ref().map(Tensor::shallow_clone)
    }
}

sat_core::register_attack!(
    Pgd,
    name = "pgd",
    description = "PGD on cross-entropy, linf or l2, random start, restarts, optionally targeted",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ball::{per_sample_l2, project};
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

    /// PGD as it was computed before `target` existed (one run, then restarts keeping
    /// the highest loss).
    fn reference_pgd(x: &Tensor, y: &Tensor, c: &PgdConfig, oracle: Oracle<'_, '_>) -> Tensor {
        let (norm, eps) = (Norm::from(c.norm), c.epsilon.0);
        let run = || {
            let mut adv = if c.random_start {
                random_start(Draws::new(None, 0), "", x, norm, eps).unwrap()
            } else {
                x.detach_copy()
            };
            for _ in 0..c.steps {
                let g = oracle
                    .input_gradient(&adv, Objective::cross_entropy(y))
                    .unwrap();
                let step = &adv + ascent_direction(&g.gradient, norm).unwrap() * c.step_size.0;
                adv = project(&step, x, norm, eps).unwrap();
            }
            adv
        };
        let loss_of = |adv: &Tensor| {
            oracle.logits(adv).unwrap().cross_entropy_loss::<Tensor>(
                y,
                None,
                tch::Reduction::None,
                -100,
                0.0,
            )
        };
        let mut best = run();
        let mut best_loss = loss_of(&best);
        for _ in 1..c.restarts {
            let adv = run();
            let loss = loss_of(&adv);
            let better = loss.gt_tensor(&best_loss);
            best = adv.where_self(&better.reshape([-1, 1, 1, 1]), &best);
            best_loss = loss.where_self(&better, &best_loss);
        }
        best
    }

    #[test]
    fn untargeted_pgd_is_unchanged_bit_for_bit() {
        let _generator = crate::tests::generator();
        for (norm, eps, restarts) in [(NormName::Linf, 8.0 / 255.0, 1), (NormName::L2, 0.5, 3)] {
            let (adapter, x, y) = setup();
            let oracle_ref = adapter.as_ref();
            let oracle = Oracle::new(&oracle_ref);
            let config = PgdConfig {
                norm,
                epsilon: Epsilon(eps),
                step_size: Epsilon(eps / 3.0),
                steps: 4,
                restarts,
                ..PgdConfig::default()
            };
            tch::manual_seed(17);
            let expected = reference_pgd(&x, &y, &config, oracle);
            tch::manual_seed(17);
            let mut pgd = Pgd::from_config(config).unwrap();
            let adv = pgd
                .perturb(&Batch::new(&x, &y, 0, 1, Phase::Evaluation), oracle)
                .unwrap();
            assert!(adv.equal(&expected), "{norm:?}, {restarts} restarts");
            assert!(pgd.targets().is_none());
        }
    }

    /// The share of `adv` the model classifies as `targets`.
    fn on_target(oracle: Oracle<'_, '_>, adv: &Tensor, targets: &Tensor) -> f64 {
        let hits = oracle
            .logits(adv)
            .unwrap()
            .argmax(-1, false)
            .eq_tensor(targets);
        hits.to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn targeted_pgd_reaches_its_targets_and_stays_in_the_ball() {
        let _generator = crate::tests::generator();
        for (norm, eps) in [(NormName::Linf, 12.0 / 255.0), (NormName::L2, 0.4)] {
            let adapter = LinearModel::random(5, 48, 23).oracle();
            let oracle_ref = adapter.as_ref();
            let oracle = Oracle::new(&oracle_ref);
            tch::manual_seed(4);
            let x = Tensor::rand([64, 3, 4, 4], (Kind::Float, Device::Cpu));
            let before = x.copy();
            let y = oracle.logits(&x).unwrap().argmax(-1, false);
            let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
            let attack = |target| {
                let mut pgd = Pgd::from_config(PgdConfig {
                    norm,
                    epsilon: Epsilon(eps),
                    step_size: Epsilon(eps / 4.0),
                    steps: 10,
                    target,
                    ..PgdConfig::default()
                })
                .unwrap();
                let adv = pgd.perturb(&batch, oracle).unwrap();
                let delta = &adv - &x;
                let size = match norm {
                    NormName::Linf => delta.abs().max(),
                    NormName::L2 => per_sample_l2(&delta).unwrap().max(),
                };
                assert!(size.double_value(&[]) <= eps + 1e-5, "{norm:?}");
                assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
                (adv, pgd.targets())
            };
            let (targeted, targets) = attack(Target::LeastLikely);
            let targets = targets.expect("least-likely targets");
            assert_eq!(targets.size(), [64]);
            assert_eq!(targets.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]), 0);
            let (untargeted, none) = attack(Target::None);
            assert!(none.is_none());
            let (t, u) = (
                on_target(oracle, &targeted, &targets),
                on_target(oracle, &untargeted, &targets),
            );
            assert!(t > u, "{norm:?}: targeted {t} vs untargeted {u}");
            assert!(t > 0.0);
            assert!(x.equal(&before), "input unchanged");
        }
    }

    #[test]
    fn targeted_restarts_keep_the_lowest_target_loss() {
        let _generator = crate::tests::generator();
        let adapter = LinearModel::random(5, 48, 29).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let x = Tensor::rand([32, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = oracle.logits(&x).unwrap().argmax(-1, false);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let run = |restarts| {
            let mut pgd = Pgd::from_config(PgdConfig {
                steps: 2,
                restarts,
                target: Target::LeastLikely,
                ..PgdConfig::default()
            })
            .unwrap();
            // Least-likely targets draw nothing: the first run of both sees the same seed.
            tch::manual_seed(8);
            let adv = pgd.perturb(&batch, oracle).unwrap();
            let targets = pgd.targets().unwrap();
            let loss = oracle.logits(&adv).unwrap().cross_entropy_loss::<Tensor>(
                &targets,
                None,
                tch::Reduction::None,
                -100,
                0.0,
            );
            (adv, loss)
        };
        let ((one, one_loss), (four, four_loss)) = (run(1), run(4));
        assert!(
            four_loss.le_tensor(&one_loss).all().int64_value(&[]) == 1,
            "restarts never keep a higher target loss"
        );
        assert!(
            four_loss.lt_tensor(&one_loss).any().int64_value(&[]) == 1,
            "some restart improved on the first run"
        );
        assert!(!one.equal(&four));
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
