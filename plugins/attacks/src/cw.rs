//! Carlini–Wagner ℓ2 (Carlini & Wagner, 2017), untargeted: minimise
//! `‖x' − x‖² + c·max(z_y − max_{j≠y} z_j, −κ)` over `x' = (tanh(w) + 1)/2` with Adam,
//! with a binary search over `c` per image. Per image the smallest successful example
//! found is returned if its ℓ2 norm is within ε, else the clean image.
//!
//! With `binary_search_steps = 1` it is torchattacks 3.5.1's `CW(c = initial_c, kappa,
//! steps, lr)`, early stop included (except that the margin here is the true one:
//! torchattacks takes maxima over logits masked with zeros, which differs where the
//! label's or every other logit is negative).
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `cw-l2`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CwConfig {
    /// ℓ2 budget: successful examples larger than this are discarded.
    pub epsilon: Epsilon,
    /// Margin κ the loss asks for beyond the decision boundary.
    pub confidence: f64,
    /// The trade-off constant `c` of the first binary-search step.
    pub initial_c: f64,
    /// Optimisations, each with its own `c` (1: plain CW with `c = initial_c`).
    pub binary_search_steps: u32,
    /// Adam steps per optimisation.
    pub steps: u32,
    /// Adam's learning rate (on `w`).
    pub learning_rate: f64,
}

impl Default for CwConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(0.5),
            confidence: 0.0,
            initial_c: 1.0,
            binary_search_steps: 5,
            steps: 100,
            learning_rate: 0.01,
        }
    }
}

/// The CW ℓ2 attack.
pub struct CarliniWagner {
    config: CwConfig,
}

impl Configurable for CarliniWagner {
    type Config = CwConfig;
    fn from_config(config: CwConfig) -> Result<Self, PluginError> {
        let fail = |m: &str| Err(PluginError::config(format!("[cw-l2] {m}")));
        crate::ranges::check(
            "cw-l2",
            &[
                ("steps", config.steps),
                ("binary_search_steps", config.binary_search_steps),
            ],
        )?;
        if !(config.confidence.is_finite() && config.confidence >= 0.0) {
            return fail("confidence must be finite and non-negative");
        }
        if !(config.initial_c.is_finite() && config.initial_c > 0.0) {
            return fail("initial_c must be positive");
        }
        if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
            return fail("learning_rate must be positive");
        }
        Ok(Self { config })
    }
}

/// Adam (Kingma & Ba) on one tensor, as `torch.optim.Adam` with β = (0.9, 0.999),
/// ε = 10⁻⁸ and no weight decay.
struct Adam {
    learning_rate: f64,
    step: i32,
    first: Tensor,
    second: Tensor,
}

impl Adam {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    fn new(like: &Tensor, learning_rate: f64) -> Result<Self, PluginError> {
        Ok(Self {
            learning_rate,
            step: 0,
            first: like.f_zeros_like()?,
            second: like.f_zeros_like()?,
        })
    }

    /// `param − lr·m̂ / (√v̂ + ε)` after folding `gradient` into the moments.
    fn update(&mut self, param: &Tensor, gradient: &Tensor) -> Result<Tensor, PluginError> {
        self.step += 1;
        self.first = self.first.f_lerp(gradient, 1.0 - Self::BETA1)?;
        self.second = self
            .second
            .f_mul_scalar(Self::BETA2)?
            .f_add(&gradient.f_square()?.f_mul_scalar(1.0 - Self::BETA2)?)?;
        let correction1 = 1.0 - Self::BETA1.powi(self.step);
        let correction2 = (1.0 - Self::BETA2.powi(self.step)).sqrt();
        let denominator = self
            .second
            .f_sqrt()?
            .f_div_scalar(correction2)?
            .f_add_scalar(Self::EPS)?;
        let step_size = self.learning_rate / correction1;
        Ok(param.f_sub(&self.first.f_div(&denominator)?.f_mul_scalar(step_size)?)?)
    }
}

/// `[N, 1, …]` view of a per-sample tensor for a `dims`-dimensional batch.
fn per_sample(t: &Tensor, dims: usize) -> Result<Tensor, PluginError> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, dims - 1));
    Ok(t.f_reshape(shape)?)
}

/// The best examples found so far: per image the smallest squared ℓ2 distance of a
/// misclassified point (10¹⁰ where none) and that point.
struct Best {
    squared: Tensor,
    examples: Tensor,
}

impl CarliniWagner {
    /// One optimisation with constants `c` `[N]` from `w0`; updates `best` and returns
    /// which images it found a misclassified point for.
    fn optimise(
        &self,
        x: &Tensor,
        labels: &Tensor,
        w0: &Tensor,
        c: &Tensor,
        best: &mut Best,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        let cfg = &self.config;
        let dims = x.dim();
        let c_view = per_sample(c, dims)?;
        let mut w = w0.f_detach_copy()?;
        let mut adam = Adam::new(&w, cfg.learning_rate)?;
        let mut succeeded = labels.f_zeros_like()?.f_to_kind(Kind::Bool)?;
        let mut previous_cost = 1e10;
        let check_every = (cfg.steps / 10).max(1);
        for step in 0..cfg.steps {
            let tanh = w.f_tanh()?;
            let adv = tanh.f_add_scalar(1.0)?.f_mul_scalar(0.5)?;
            let delta = adv.f_sub(x)?;
            let squared =
                delta
                    .f_square()?
                    .f_flatten(1, -1)?
                    .f_sum_dim_intlist(1, false, Kind::Float)?;
            // margin = max_{j≠y} z_j − z_y; f = max(−margin, −κ), active where not clamped.
            let g = oracle.input_gradient(&adv, Objective::margin(labels))?;
            let f = g.value.f_neg()?.f_clamp_min(-cfg.confidence)?;
            let active = g.value.f_le(cfg.confidence)?.f_to_kind(Kind::Float)?;
            let cost = squared.f_sum(Kind::Double)?.double_value(&[])
                + c.f_mul(&f)?.f_sum(Kind::Double)?.double_value(&[]);
            // d cost / d adv = 2·δ − c·[active]·∇margin; d adv / d w = (1 − tanh²)/2.
            let weight = c_view.f_mul(&per_sample(&active, dims)?)?;
            let grad_adv = delta
                .f_mul_scalar(2.0)?
                .f_sub(&g.gradient.f_mul(&weight)?)?;
            let grad_w = grad_adv.f_mul(
                &tanh
                    .f_square()?
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul_scalar(0.5)?,
            )?;
            w = adam.update(&w, &grad_w)?;

            // Bookkeeping at the point just evaluated, as torchattacks does.
            let wrong = g.logits.f_argmax(-1, false)?.f_ne_tensor(labels)?;
            succeeded = succeeded.f_logical_or(&wrong)?;
            let better = wrong.f_logical_and(&best.squared.f_gt_tensor(&squared)?)?;
            best.squared = squared.f_where_self(&better, &best.squared)?;
            best.examples = adv.f_where_self(&per_sample(&better, dims)?, &best.examples)?;
            // Early stop when the total cost rose since the last check.
            if step % check_every == 0 {
                if cost > previous_cost {
                    break;
                }
                previous_cost = cost;
            }
        }
        Ok(succeeded)
    }
}

impl Attack for CarliniWagner {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::L2,
            epsilon: self.config.epsilon.0,
            steps: self.config.binary_search_steps * self.config.steps,
        }
    }

    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let (x, labels) = (batch.images(), batch.labels());
        let x = x.f_to_kind(Kind::Float)?;
        let (n, dims, device) = (x.size()[0], x.dim(), x.device());
        // w = atanh(2x − 1), as torchattacks writes it (±∞ at 0 and 1).
        let u = x.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?.f_clamp(-1.0, 1.0)?;
        let w0 = u
            .f_add_scalar(1.0)?
            .f_div(&u.f_neg()?.f_add_scalar(1.0)?)?
            .f_log()?
            .f_mul_scalar(0.5)?;
        let opts = (Kind::Float, device);
        let mut c = Tensor::f_full([n], self.config.initial_c, opts)?;
        let mut lower = Tensor::f_zeros([n], opts)?;
        let mut upper = Tensor::f_full([n], 1e10, opts)?;
        let mut best = Best {
            squared: Tensor::f_full([n], 1e10, opts)?,
            examples: x.f_detach_copy()?,
        };
        for _ in 0..self.config.binary_search_steps {
            let succeeded = self.optimise(&x, &labels, &w0, &c, &mut best, oracle)?;
            // Success: c is an upper bound; failure: a lower bound, ×10 until bounded.
            upper = upper.f_minimum(&c)?.f_where_self(&succeeded, &upper)?;
            lower = lower
                .f_maximum(&c)?
                .f_where_self(&succeeded.f_logical_not()?, &lower)?;
            let bounded = upper.f_lt(1e9)?;
            let middle = lower.f_add(&upper)?.f_mul_scalar(0.5)?;
            c = middle.f_where_self(&bounded, &c.f_mul_scalar(10.0)?)?;
        }
        let within = best
            .squared
            .f_lt(1e10)?
            .f_logical_and(&best.squared.f_sqrt()?.f_le(self.config.epsilon.0)?)?;
        Ok(best
            .examples
            .f_where_self(&per_sample(&within, dims)?, &x)?)
    }
}

sat_core::register_attack!(
    CarliniWagner,
    name = "cw-l2",
    description =
        "Carlini-Wagner l2: Adam in tanh space, binary search over c, best example within epsilon",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ball::per_sample_l2;
    use crate::fab::tests::{binary_setup, boundary_distance};
    use sat_core::{parse_config, testing::LinearModel, OracleAdapter, Phase};

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn run(text: &str, adapter: &OracleAdapter<LinearModel>, x: &Tensor, y: &Tensor) -> Tensor {
        let oracle_ref = adapter.as_ref();
        let mut cw = CarliniWagner::from_config(parse_config("cw-l2", text).unwrap()).unwrap();
        cw.perturb(
            &Batch::new(x, y, 0, 1, Phase::Evaluation),
            Oracle::new(&oracle_ref),
        )
        .unwrap()
    }

    fn wrong(adapter: &OracleAdapter<LinearModel>, adv: &Tensor, y: &Tensor) -> Vec<bool> {
        let w = adapter
            .0
            .forward(adv)
            .unwrap()
            .argmax(-1, false)
            .ne_tensor(y);
        Vec::<bool>::try_from(&w).unwrap()
    }

    #[test]
    fn adam_matches_its_closed_form_first_step() {
        let _generator = crate::tests::generator();
        // The bias-corrected first step is lr·g/(|g| + ε): lr·sign(g), and 0 where g = 0.
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let g = Tensor::from_slice(&[0.3f32, -4.0, 0.0]);
        let mut adam = Adam::new(&p, 0.1).unwrap();
        let next = adam.update(&p, &g).unwrap();
        let expected = [0.9, -1.9, 0.5];
        for (got, want) in values(&next).iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn finds_about_the_closed_form_distance_to_a_linear_boundary() {
        let _generator = crate::tests::generator();
        let (model, x, y, gap) = binary_setup();
        let distance = boundary_distance(&model, &gap, Norm::L2);
        let adapter = model.oracle();
        let adv = run(
            "epsilon = 10.0\nsteps = 100\ninitial_c = 0.1",
            &adapter,
            &x,
            &y,
        );
        assert!(wrong(&adapter, &adv, &y).iter().all(|w| *w), "all broken");
        let found = values(&per_sample_l2(&(&adv - &x)).unwrap());
        for (got, want) in found.iter().zip(&distance) {
            assert!(
                *got >= want * (1.0 - 1e-3) && *got <= want * 1.02 + 3e-3,
                "{got} vs the minimum {want}"
            );
        }
    }

    use crate::tests::multiclass;

    #[test]
    fn stays_in_ball_and_box_is_deterministic_and_lowers_accuracy() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = multiclass();
        let before = x.copy();
        let text = "epsilon = 0.3\nsteps = 30\nbinary_search_steps = 3";
        tch::manual_seed(1);
        let adv = run(text, &adapter, &x, &y);
        tch::manual_seed(2);
        assert!(adv.equal(&run(text, &adapter, &x, &y)), "no randomness");
        assert!(x.equal(&before), "input untouched");
        let size = per_sample_l2(&(&adv - &x)).unwrap().max().double_value(&[]);
        assert!(size <= 0.3, "{size}");
        assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
        let broken = wrong(&adapter, &adv, &y).iter().filter(|w| **w).count();
        assert!(broken > 3 && broken < 24, "{broken} of 24 broken");
        // Images not broken are returned exactly.
        let unchanged = values(
            &(&adv - &x)
                .abs()
                .flatten(1, -1)
                .amax([1i64].as_slice(), false),
        );
        for (w, u) in wrong(&adapter, &adv, &y).iter().zip(unchanged) {
            assert_eq!(*w, u > 0.0);
        }
    }

    #[test]
    fn a_larger_budget_is_never_less_successful() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = multiclass();
        let mut previous = vec![false; 24];
        for eps in [0.1, 0.3, 1.0] {
            let text = format!("epsilon = {eps}\nsteps = 30\nbinary_search_steps = 3");
            let now = wrong(&adapter, &run(&text, &adapter, &x, &y), &y);
            for (i, (p, n)) in previous.iter().zip(&now).enumerate() {
                assert!(!p || *n, "image {i} broken below ε = {eps} but not at it");
            }
            previous = now;
        }
        assert!(previous.iter().any(|w| *w));
    }

    #[test]
    fn binary_search_helps_where_the_initial_c_is_too_small() {
        let _generator = crate::tests::generator();
        // c = 10⁻³ is too weak to cross the boundary in one optimisation; the search
        // multiplies it by 10 after each failure.
        let (adapter, x, y) = multiclass();
        let one = run(
            "epsilon = 1.0\nsteps = 30\ninitial_c = 0.001\nbinary_search_steps = 1",
            &adapter,
            &x,
            &y,
        );
        let four = run(
            "epsilon = 1.0\nsteps = 30\ninitial_c = 0.001\nbinary_search_steps = 4",
            &adapter,
            &x,
            &y,
        );
        let count = |adv: &Tensor| wrong(&adapter, adv, &y).iter().filter(|w| **w).count();
        assert!(
            count(&four) > count(&one),
            "{} vs {}",
            count(&four),
            count(&one)
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let _generator = crate::tests::generator();
        let bad = |text: &str| {
            parse_config::<CwConfig>("cw-l2", text)
                .and_then(CarliniWagner::from_config)
                .err()
                .map(|e| e.message.to_string())
                .unwrap_or_default()
        };
        assert!(bad("steps = 0").contains("steps"));
        assert!(bad("initial_c = 0.0").contains("initial_c"));
        assert!(bad("confidence = -1.0").contains("confidence"));
        assert!(bad("norm = \"l2\"").contains("norm"));
    }
}
