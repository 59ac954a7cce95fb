//! FAB (Croce & Hein, 2020), the Fast Adaptive Boundary attack, ℓ∞ or ℓ2, as ported by
//! torchattacks 3.5.1 from fra31/auto-attack: `fab` (untargeted, towards the nearest
//! linearised class boundary) and `fab-t` (AutoAttack's multi-targeted version).
//!
//! Each step linearises the model at the iterate, projects both the iterate and the
//! clean image onto the chosen boundary hyperplane within the box, mixes the two steps
//! (weight at most `alpha_max`), overshoots by `eta`, and pulls adversarial iterates back
//! towards the image by `beta`. Per image the smallest adversarial found is kept; it is
//! returned if its norm is within ε, else the clean image.
pub mod projection;

use crate::pgd::NormName;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `fab`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Budget: adversarials larger than this are discarded.
    pub epsilon: Epsilon,
    /// Iterations per run.
    pub steps: u32,
    /// Runs; every run after the first starts at a random point at ε/2.
    pub restarts: u32,
    /// Largest weight of the step from the clean image (α_max).
    pub alpha_max: f64,
    /// Overshoot factor of the projection (η).
    pub eta: f64,
    /// Factor pulling adversarial iterates back towards the image (β).
    pub beta: f64,
}

impl Default for FabConfig {
    fn default() -> Self {
        Self {
            norm: NormName::Linf,
            epsilon: Epsilon(8.0 / 255.0),
            steps: 100,
            restarts: 1,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }
}

impl FabConfig {
    /// Rejects settings the algorithm cannot run with; `name` prefixes the message.
    fn check(&self, name: &str) -> Result<(), PluginError> {
        let fail = |m: &str| Err(PluginError::config(format!("[{name}] {m}")));
        crate::ranges::check(name, &[("steps", self.steps), ("restarts", self.restarts)])?;
        if !(0.0..=1.0).contains(&self.alpha_max) {
            return fail("alpha_max must be in [0, 1]");
        }
        if !(self.eta.is_finite() && self.eta >= 1.0) {
            return fail("eta must be at least 1");
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            return fail("beta must be in (0, 1]");
        }
        Ok(())
    }
}

/// Configuration of `fab-t`: that of `fab` and the number of target classes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FabTargetedConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Budget: adversarials larger than this are discarded.
    pub epsilon: Epsilon,
    /// Iterations per run.
    pub steps: u32,
    /// Runs per target class; every run after the first starts at a random point.
    pub restarts: u32,
    /// Largest weight of the step from the clean image (α_max).
    pub alpha_max: f64,
    /// Overshoot factor of the projection (η).
    pub eta: f64,
    /// Factor pulling adversarial iterates back towards the image (β).
    pub beta: f64,
    /// Target classes tried in turn: the 2nd, 3rd, … highest clean logit (capped at
    /// the number of classes − 1).
    pub target_classes: u32,
}

impl Default for FabTargetedConfig {
    fn default() -> Self {
        let base = FabConfig::default();
        Self {
            norm: base.norm,
            epsilon: base.epsilon,
            steps: base.steps,
            restarts: base.restarts,
            alpha_max: base.alpha_max,
            eta: base.eta,
            beta: base.beta,
            target_classes: 9,
        }
    }
}

/// Untargeted FAB.
pub struct Fab {
    config: FabConfig,
}

/// Multi-targeted FAB (FAB-T of AutoAttack). Success is misclassification within ε,
/// as in AutoAttack, so it reports no targets: each image may be broken towards a
/// different one of its candidate targets.
pub struct FabTargeted {
    config: FabConfig,
    target_classes: u32,
}

impl Configurable for Fab {
    type Config = FabConfig;
    fn from_config(config: FabConfig) -> Result<Self, PluginError> {
        config.check("fab")?;
        Ok(Self { config })
    }
}

impl Configurable for FabTargeted {
    type Config = FabTargetedConfig;
    fn from_config(c: FabTargetedConfig) -> Result<Self, PluginError> {
        let config = FabConfig {
            norm: c.norm,
            epsilon: c.epsilon,
            steps: c.steps,
            restarts: c.restarts,
            alpha_max: c.alpha_max,
            eta: c.eta,
            beta: c.beta,
        };
        config.check("fab-t")?;
        crate::ranges::check("fab-t", &[("target_classes", c.target_classes)])?;
        Ok(Self {
            config,
            target_classes: c.target_classes,
        })
    }
}

/// `[N, 1, …]` view of a per-sample tensor for a `dims`-dimensional batch.
fn per_sample(t: &Tensor, dims: usize) -> Result<Tensor, PluginError> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, dims - 1));
    Ok(t.f_reshape(shape)?)
}

/// Per-sample `norm` of a batch, `[N]`.
fn sample_norm(t: &Tensor, norm: Norm) -> Result<Tensor, PluginError> {
    let flat = t.f_flatten(1, -1)?;
    Ok(match norm {
        Norm::Linf => flat.f_abs()?.f_amax([1i64].as_slice(), false)?,
        Norm::L2 => flat.f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?,
    })
}

/// Per-sample dual norm of a batch of gradients `[N, D]` (ℓ1 for ℓ∞, ℓ2 for ℓ2).
fn dual_norm(g: &Tensor, norm: Norm) -> Result<Tensor, PluginError> {
    Ok(match norm {
        Norm::Linf => g.f_abs()?.f_sum_dim_intlist(1, false, Kind::Float)?,
        Norm::L2 => g.f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?,
    })
}

/// Predicted classes at `x`.
fn predictions(oracle: Oracle<'_, '_>, x: &Tensor) -> Result<Tensor, PluginError> {
    Ok(oracle.logits(x)?.f_argmax(-1, false)?)
}

/// One FAB run over images that the model classifies correctly.
struct Run<'a, 'r, 'o> {
    config: &'a FabConfig,
    oracle: Oracle<'r, 'o>,
    images: &'a Tensor,
    labels: &'a Tensor,
    /// Target class per image (FAB-T), or `None` for the nearest boundary.
    targets: Option<&'a Tensor>,
}

impl Run<'_, '_, '_> {
    fn norm(&self) -> Norm {
        self.config.norm.into()
    }

    /// The linearised boundary to project on at `x`: the logit difference `z_k − z_y`
    /// `[N]` and its input gradient `[N, D]`, for the target class, or (untargeted) for
    /// the class whose linearised boundary is nearest in the attack's norm.
    fn boundary(&self, x: &Tensor) -> Result<(Tensor, Tensor), PluginError> {
        let n = x.size()[0];
        let classes = i64::from(self.oracle.num_classes()?);
        let own = self.labels.f_one_hot(classes)?.f_to_kind(Kind::Float)?;
        let difference = |class: &Tensor| -> Result<(Tensor, Tensor), PluginError> {
            let weights = class
                .f_one_hot(classes)?
                .f_to_kind(Kind::Float)?
                .f_sub(&own)?;
            let g = self
                .oracle
                .input_gradient(x, Objective::weighted_logits(&weights))?;
            Ok((
                g.value.f_to_kind(Kind::Float)?,
                g.gradient.f_reshape([n, -1])?,
            ))
        };
        if let Some(targets) = self.targets {
            return difference(targets);
        }
        // `get_diff_logits_grads_batch`: one gradient per class; the label's own
        // boundary is excluded (its difference is set to 10¹⁰), ties go to the lowest class.
        let mut best: Option<(Tensor, Tensor, Tensor)> = None;
        for k in 0..classes {
            let class = Tensor::f_full([n], k, (Kind::Int64, x.device()))?;
            let (df, dg) = difference(&class)?;
            let df = df.f_masked_fill(&self.labels.f_eq(k)?, 1e10)?;
            let dist = df
                .f_abs()?
                .f_div(&dual_norm(&dg, self.norm())?.f_add_scalar(1e-12)?)?;
            best = Some(match best {
                None => (dist, df, dg),
                Some((bd, bf, bg)) => {
                    let closer = dist.f_lt_tensor(&bd)?;
                    (
                        dist.f_where_self(&closer, &bd)?,
                        df.f_where_self(&closer, &bf)?,
                        dg.f_where_self(&closer.f_unsqueeze(1)?, &bg)?,
                    )
                }
            });
        }
        let (_, df, dg) =
            best.ok_or_else(|| PluginError::invalid_input("the model has no classes"))?;
        Ok((df, dg))
    }

    /// The starting point: the image, or a random point at ε/2 (in the attack's norm).
    fn start(&self, random: bool) -> Result<Tensor, PluginError> {
        let x = self.images;
        if !random {
            return Ok(x.f_detach_copy()?);
        }
        let t = match self.norm() {
            Norm::Linf => x.f_rand_like()?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?,
            Norm::L2 => x.f_randn_like()?,
        };
        let scale = per_sample(&sample_norm(&t, self.norm())?, x.dim())?;
        let half = 0.5 * self.config.epsilon.0;
        Ok(x.f_add(&t.f_div(&scale)?.f_mul_scalar(half)?)?
            .f_clamp(0.0, 1.0)?)
    }

    /// `attack_single_run(_targeted)`: the smallest adversarial found per image (any
    /// size), or the image where none was found.
    fn execute(&self, random_start: bool) -> Result<Tensor, PluginError> {
        let c = self.config;
        let (im2, norm) = (self.images, self.norm());
        let (bs, dims) = (im2.size()[0], im2.dim());
        let x0 = im2.f_reshape([bs, -1])?;
        let mut x1 = self.start(random_start)?;
        let mut adv = im2.f_detach_copy()?;
        let mut res2 = Tensor::f_full([bs], 1e10, (Kind::Float, im2.device()))?;
        for _ in 0..c.steps {
            let (df, dg) = self.boundary(&x1)?;
            let flat = x1.f_reshape([bs, -1])?;
            let b =
                df.f_neg()?
                    .f_add(&dg.f_mul(&flat)?.f_sum_dim_intlist(1, false, Kind::Float)?)?;
            let d3 = projection::onto_hyperplane(
                &Tensor::f_cat(&[&flat, &x0], 0)?,
                &Tensor::f_cat(&[&dg, &dg], 0)?,
                &Tensor::f_cat(&[&b, &b], 0)?,
                norm,
            )?;
            let d1 = d3.f_narrow(0, 0, bs)?.f_reshape(im2.size())?;
            let d2 = d3.f_narrow(0, bs, bs)?.f_reshape(im2.size())?;
            let a0 = sample_norm(&d3, norm)?.f_clamp_min(1e-8)?;
            let (a1, a2) = (a0.f_narrow(0, 0, bs)?, a0.f_narrow(0, bs, bs)?);
            let alpha = a1
                .f_div(&a1.f_add(&a2)?)?
                .f_clamp_min(0.0)?
                .f_clamp_max(c.alpha_max)?;
            let alpha = per_sample(&alpha, dims)?;
            let from_iterate = x1
                .f_add(&d1.f_mul_scalar(c.eta)?)?
                .f_mul(&alpha.f_neg()?.f_add_scalar(1.0)?)?;
            let from_image = im2.f_add(&d2.f_mul_scalar(c.eta)?)?.f_mul(&alpha)?;
            x1 = from_iterate.f_add(&from_image)?.f_clamp(0.0, 1.0)?;

            let is_adv = predictions(self.oracle, &x1)?.f_ne_tensor(self.labels)?;
            let t = sample_norm(&x1.f_sub(im2)?, norm)?;
            let smaller = is_adv.f_logical_and(&t.f_lt_tensor(&res2)?)?;
            adv = x1.f_where_self(&per_sample(&smaller, dims)?, &adv)?;
            res2 = t.f_where_self(&smaller, &res2)?;
            let back = im2.f_add(&x1.f_sub(im2)?.f_mul_scalar(c.beta)?)?;
            x1 = back.f_where_self(&per_sample(&is_adv, dims)?, &x1)?;
        }
        let found = per_sample(&res2.f_lt(1e10)?, dims)?;
        Ok(adv.f_where_self(&found, im2)?)
    }
}

/// FAB's outer loop (`perturb`): per target rank (`None`: untargeted) and restart, attack
/// the images still classified correctly and keep the adversarials within ε.
fn fab(
    config: &FabConfig,
    batch: &Batch,
    oracle: Oracle<'_, '_>,
    target_ranks: &[Option<i64>],
) -> Result<Tensor, PluginError> {
    let (x, y) = (batch.images(), batch.labels());
    let norm: Norm = config.norm.into();
    let logits = oracle.logits(&x)?;
    let classes = logits.size()[1];
    let mut robust = logits.f_argmax(-1, false)?.f_eq_tensor(&y)?;
    let mut adv = x.f_to_kind(Kind::Float)?.f_detach_copy()?;
    for rank in target_ranks {
        for restart in 0..config.restarts {
            let index = robust.f_nonzero()?.f_squeeze_dim(1)?;
            if index.size()[0] == 0 {
                return Ok(adv);
            }
            let images = x.f_index_select(0, &index)?;
            let labels = y.f_index_select(0, &index)?;
            // The rank-th highest clean logit (ascending order read from the end, as
            // `output.sort(dim=-1)[1][:, -rank]`).
            let targets = match rank {
                Some(r) => Some(
                    logits
                        .f_index_select(0, &index)?
                        .f_argsort(1, false)?
                        .f_select(1, classes - r)?,
                ),
                None => None,
            };
            let run = Run {
                config,
                oracle,
                images: &images,
                labels: &labels,
                targets: targets.as_ref(),
            };
            let candidate = run.execute(restart > 0)?;
            let fooled = predictions(oracle, &candidate)?.f_ne_tensor(&labels)?;
            let small = sample_norm(&candidate.f_sub(&images)?, norm)?.f_le(config.epsilon.0)?;
            let broken = fooled.f_logical_and(&small)?;
            let which = broken.f_nonzero()?.f_squeeze_dim(1)?;
            let rows = index.f_index_select(0, &which)?;
            adv = adv.f_index_copy(0, &rows, &candidate.f_index_select(0, &which)?)?;
            robust = robust.f_index_fill(0, &rows, 0i64)?;
        }
    }
    Ok(adv)
}

impl Attack for Fab {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: self.config.norm.into(),
            epsilon: self.config.epsilon.0,
            steps: self.config.steps * self.config.restarts,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        fab(&self.config, batch, oracle, &[None])
    }
}

impl Attack for FabTargeted {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: self.config.norm.into(),
            epsilon: self.config.epsilon.0,
            steps: self.config.steps * self.config.restarts * self.target_classes,
        }
    }
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let classes = i64::from(oracle.num_classes()?);
        let count = i64::from(self.target_classes).min(classes - 1);
        let ranks: Vec<Option<i64>> = (2..count + 2).map(Some).collect();
        fab(&self.config, batch, oracle, &ranks)
    }
}

sat_core::register_attack!(
    Fab,
    name = "fab",
    description = "FAB (Croce & Hein): minimal-norm boundary attack, linf or l2, untargeted",
);

sat_core::register_attack!(
    FabTargeted,
    name = "fab-t",
    description =
        "FAB-T (AutoAttack): FAB towards each of the top clean classes in turn, linf or l2",
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sat_core::{parse_config, testing::LinearModel, OracleAdapter, Phase};
    use tch::Device;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// A linear binary classifier whose logits vanish at the grey image, and images near
    /// grey: the box never binds, so the distance to the boundary is the closed form
    /// `|Δw·x + Δb| / ‖Δw‖_dual`.
    pub(crate) fn binary_setup() -> (LinearModel, Tensor, Tensor, Tensor) {
        tch::manual_seed(17);
        let opts = (Kind::Float, Device::Cpu);
        let weight = Tensor::randn([2, 48], opts);
        let bias = -weight.sum_dim_intlist(1, false, Kind::Float) * 0.5;
        let x = Tensor::rand([8, 3, 4, 4], opts).f_mul_scalar(0.1).unwrap() + 0.45;
        let model = LinearModel { weight, bias };
        let y = model.forward(&x).unwrap().argmax(-1, false);
        let gap = model.forward(&x).unwrap();
        let gap = (gap.select(1, 0) - gap.select(1, 1)).abs();
        (model, x, y, gap)
    }

    /// Closed-form distance of each image to the boundary of [`binary_setup`]'s model.
    pub(crate) fn boundary_distance(model: &LinearModel, gap: &Tensor, norm: Norm) -> Vec<f64> {
        let dw = model.weight.get(0) - model.weight.get(1);
        let dual = match norm {
            Norm::Linf => dw.abs().sum(Kind::Float),
            Norm::L2 => dw.norm(),
        };
        values(&(gap / dual))
    }

    fn run(
        name: &str,
        text: &str,
        adapter: &OracleAdapter<LinearModel>,
        x: &Tensor,
        y: &Tensor,
    ) -> Tensor {
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let batch = Batch::new(x, y, 0, 1, Phase::Evaluation);
        let mut attack: Box<dyn Attack> = match name {
            "fab" => Box::new(Fab::from_config(parse_config(name, text).unwrap()).unwrap()),
            _ => Box::new(FabTargeted::from_config(parse_config(name, text).unwrap()).unwrap()),
        };
        attack.perturb(&batch, oracle).unwrap()
    }

    fn accuracy(adapter: &OracleAdapter<LinearModel>, x: &Tensor, y: &Tensor) -> f64 {
        let logits = adapter.0.forward(x).unwrap();
        logits
            .argmax(-1, false)
            .eq_tensor(y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    #[test]
    fn finds_the_closed_form_distance_to_a_linear_boundary() {
        let _generator = crate::tests::generator();
        for (norm, name) in [(Norm::Linf, "linf"), (Norm::L2, "l2")] {
            for attack in ["fab", "fab-t"] {
                let (model, x, y, gap) = binary_setup();
                let distance = boundary_distance(&model, &gap, norm);
                let adapter = model.oracle();
                let text = format!("norm = \"{name}\"\nepsilon = 1.0\nsteps = 10");
                let adv = run(attack, &text, &adapter, &x, &y);
                assert_eq!(
                    accuracy(&adapter, &adv, &y),
                    0.0,
                    "{attack} {name}: all broken"
                );
                let found = values(&sample_norm(&(&adv - &x), norm).unwrap());
                for (got, want) in found.iter().zip(&distance) {
                    assert!(
                        *got >= want * (1.0 - 1e-3) && *got <= want * 1.01 + 1e-6,
                        "{attack} {name}: {got} vs the minimum {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn returns_the_clean_image_when_the_boundary_is_beyond_epsilon() {
        let _generator = crate::tests::generator();
        for (norm, name) in [(Norm::Linf, "linf"), (Norm::L2, "l2")] {
            let (model, x, y, gap) = binary_setup();
            let distance = boundary_distance(&model, &gap, norm);
            let nearest = distance.iter().cloned().fold(f64::INFINITY, f64::min);
            let farthest = distance.iter().cloned().fold(0.0, f64::max);
            // Between the nearest and the farthest: exactly those within ε are broken.
            let eps = 0.5 * (nearest + farthest);
            let adapter = model.oracle();
            let text = format!("norm = \"{name}\"\nepsilon = {eps}\nsteps = 10\nrestarts = 2");
            let adv = run("fab", &text, &adapter, &x, &y);
            let wrong = values(
                &adapter
                    .0
                    .forward(&adv)
                    .unwrap()
                    .argmax(-1, false)
                    .ne_tensor(&y)
                    .to_kind(Kind::Float),
            );
            let unchanged = values(
                &(&adv - &x)
                    .abs()
                    .flatten(1, -1)
                    .amax([1i64].as_slice(), false)
                    .eq(0.0)
                    .to_kind(Kind::Float),
            );
            for i in 0..distance.len() {
                let within = distance[i] < eps * 0.99;
                assert_eq!(wrong[i] == 1.0, within, "{name} image {i}: {}", distance[i]);
                assert_eq!(unchanged[i] == 1.0, !within, "{name} image {i}");
            }
        }
    }

    use crate::tests::multiclass;

    #[test]
    fn stays_in_ball_and_box_is_deterministic_and_lowers_accuracy() {
        let _generator = crate::tests::generator();
        for (norm, name, eps) in [(Norm::Linf, "linf", 0.05), (Norm::L2, "l2", 0.3)] {
            for attack in ["fab", "fab-t"] {
                let (adapter, x, y) = multiclass();
                let before = x.copy();
                let text = format!(
                    "norm = \"{name}\"\nepsilon = {eps}\nsteps = 5\nrestarts = 2\n{}",
                    if attack == "fab-t" {
                        "target_classes = 3"
                    } else {
                        ""
                    }
                );
                tch::manual_seed(1);
                let adv = run(attack, &text, &adapter, &x, &y);
                tch::manual_seed(1);
                let again = run(attack, &text, &adapter, &x, &y);
                assert!(adv.equal(&again), "{attack} {name}: same seed, same result");
                assert!(x.equal(&before), "input untouched");
                let size = sample_norm(&(&adv - &x), norm)
                    .unwrap()
                    .max()
                    .double_value(&[]);
                assert!(size <= eps + 1e-6, "{attack} {name}: {size} > {eps}");
                assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
                let robust = accuracy(&adapter, &adv, &y);
                assert!(robust < 0.9, "{attack} {name}: accuracy {robust}");
                assert!(
                    robust > 0.0,
                    "{attack} {name}: ε too large for a meaningful test"
                );
            }
        }
    }

    #[test]
    fn fab_t_is_at_least_as_strong_as_fab() {
        let _generator = crate::tests::generator();
        for (name, eps) in [("linf", 0.05), ("l2", 0.3)] {
            let (adapter, x, y) = multiclass();
            let text = format!("norm = \"{name}\"\nepsilon = {eps}\nsteps = 10");
            let untargeted = accuracy(&adapter, &run("fab", &text, &adapter, &x, &y), &y);
            let targeted = accuracy(&adapter, &run("fab-t", &text, &adapter, &x, &y), &y);
            assert!(
                targeted <= untargeted,
                "{name}: fab-t {targeted} vs fab {untargeted}"
            );
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let _generator = crate::tests::generator();
        let bad = |name: &str, text: &str| -> String {
            let result = match name {
                "fab" => parse_config::<FabConfig>(name, text)
                    .and_then(Fab::from_config)
                    .map(|_| ()),
                _ => parse_config::<FabTargetedConfig>(name, text)
                    .and_then(FabTargeted::from_config)
                    .map(|_| ()),
            };
            result.unwrap_err().message.to_string()
        };
        assert!(bad("fab", "steps = 0").contains("steps"));
        assert!(bad("fab", "beta = 1.5").contains("beta"));
        assert!(bad("fab", "target_classes = 3").contains("target_classes"));
        assert!(bad("fab-t", "target_classes = 0").contains("target_classes"));
        assert!(bad("fab-t", "norm = \"l1\"").contains("l1"));
    }
}
