//! GradAlign (Andriushchenko & Flammarion 2020): cross-entropy plus a penalty on the
//! misalignment of the input gradients at the clean images and at a uniformly random
//! point of the ε-ball around them, which keeps single-step (FGSM) adversarial training
//! from catastrophic overfitting.
use crate::terms::{mean_cross_entropy, weight};
use sat_core::{
    component::Configurable, objective_gradient, Batch, Epsilon, Loss, Objective, PluginError,
    TrainingModel, TrainingObjective,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Norms below this count as this in the cosine (as `torch.nn.functional.cosine_similarity`).
const NORM_FLOOR: f64 = 1e-8;

/// Configuration of `gradalign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradAlignConfig {
    /// λ ≥ 0, the weight of the alignment penalty (0.2: the paper's CIFAR-10 value at
    /// ε = 8/255; it grows with ε).
    pub lambda: f64,
    /// Radius (ℓ∞) of the uniform noise η, in `[0, 1]`; usually the training budget.
    pub epsilon: Epsilon,
}

impl Default for GradAlignConfig {
    fn default() -> Self {
        Self {
            lambda: 0.2,
            epsilon: Epsilon(8.0 / 255.0),
        }
    }
}

/// `CE(f(x'), y) + λ·(1 − mean_n cos(∇ₓℓ_n(x), ∇ₓℓ_n(x + η)))`: `x` the clean images,
/// `η ~ U(−ε, ε)` elementwise with `x + η` clamped to `[0, 1]`, `ℓ` the per-sample
/// cross-entropy. As in the reference code, the gradient at `x` is a constant (no
/// graph) and the one at `x + η` is differentiable in the parameters. Unlike the
/// reference code, `x + η` is clamped to `[0, 1]`, the model's input domain.
pub struct GradAlign {
    config: GradAlignConfig,
}

impl Configurable for GradAlign {
    type Config = GradAlignConfig;
    fn from_config(config: GradAlignConfig) -> Result<Self, PluginError> {
        weight("gradalign", "lambda", config.lambda)?;
        let eps = config.epsilon.0;
        if !(0.0..=1.0).contains(&eps) {
            return Err(PluginError::config(format!(
                "[gradalign] epsilon must be in [0, 1], got {eps}"
            )));
        }
        Ok(Self { config })
    }
}

impl TrainingObjective for GradAlign {
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError> {
        let (images, labels) = (batch.images(), batch.labels());
        let eps = self.config.epsilon.0;
        let noise = batch
            .draws()
            .uniform_like("gradalign.noise", &images)?
            .f_mul_scalar(2.0 * eps)?
            .f_sub_scalar(eps)?;
        let shifted = images.f_add(&noise)?.f_clamp(0.0, 1.0)?;
        let logits = model.forward(inputs)?;
        let ce = mean_cross_entropy(&logits, &labels)?;
        // No graph: backward to the images only (the parameters get no `.grad`).
        let at_clean = objective_gradient(
            |x| model.forward(x),
            &images,
            &Objective::cross_entropy(&labels),
        )?
        .gradient
        .f_detach()?;
        let at_shifted = model
            .input_gradient(&shifted, Objective::cross_entropy(&labels))?
            .gradient;
        let cosines = Tensor::f_cosine_similarity(
            &at_clean.f_flatten(1, -1)?,
            &at_shifted.f_flatten(1, -1)?,
            1,
            NORM_FLOOR,
        )?;
        let misalignment = cosines.f_mean(cosines.kind())?.f_neg()?.f_add_scalar(1.0)?;
        let value = ce.f_add(&misalignment.f_mul_scalar(self.config.lambda)?)?;
        Ok(Loss { value, logits })
    }
}

sat_core::register_objective!(
    GradAlign,
    name = "gradalign",
    description =
        "GradAlign: CE + lambda * (1 - cos(grad_x CE(x), grad_x CE(x + eta))), eta ~ U(-eps, eps)",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        ce_input_gradient_of, config_error, cosines, mean_cross_entropy_of, rng_lock, Fixture,
    };
    use tch::Kind;

    fn gradalign(lambda: f64, epsilon: f64) -> GradAlign {
        GradAlign::from_config(GradAlignConfig {
            lambda,
            epsilon: Epsilon(epsilon),
        })
        .unwrap()
    }

    /// `x + η` as the objective draws it after `tch::manual_seed(seed)`.
    fn shifted(fx: &Fixture, epsilon: f64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let u = fx.images.rand_like();
        (&fx.images + (u * 2.0 - 1.0) * epsilon).clamp(0.0, 1.0)
    }

    #[test]
    fn zero_lambda_is_cross_entropy() {
        let _rng = rng_lock();
        Fixture::new(41).assert_zero_weight_is_ce(&mut gradalign(0.0, 0.1), false);
    }

    #[test]
    fn no_noise_means_no_penalty() {
        let _rng = rng_lock();
        let fx = Fixture::new(42);
        let (with, ..) = fx.run(&mut gradalign(2.5, 0.0), 0);
        let (without, ..) = fx.run(&mut gradalign(0.0, 0.0), 0);
        let penalty = (with.value - without.value).double_value(&[]);
        assert!(penalty.abs() < 1e-9, "{penalty}");
    }

    #[test]
    fn penalty_matches_closed_form_with_seeded_noise() {
        let _rng = rng_lock();
        let fx = Fixture::new(43);
        let (eps, seed) = (0.3, 7);
        let at_clean = fx.ce_input_gradient(&fx.images);
        let at_shifted = fx.ce_input_gradient(&shifted(&fx, eps, seed));
        let expected = 1.0
            - cosines(&at_clean, &at_shifted)
                .mean(Kind::Double)
                .double_value(&[]);
        fx.assert_penalty(
            &mut gradalign(2.5, eps),
            &mut gradalign(0.0, eps),
            2.5,
            expected,
            seed,
        );
    }

    #[test]
    fn gradient_matches_finite_differences_with_the_clean_gradient_held() {
        let _rng = rng_lock();
        let fx = Fixture::new(44);
        let (lambda, eps, seed) = (2.0, 0.3, 9);
        let (_, gw, gb) = fx.run(&mut gradalign(lambda, eps), seed);
        let x_shifted = shifted(&fx, eps, seed);
        let at_clean = fx.ce_input_gradient(&fx.images);
        fx.assert_gradients_match((gw, gb), |w, b| {
            let ce = mean_cross_entropy_of(w, b, &fx.inputs, &fx.labels);
            let at_shifted = ce_input_gradient_of(w, b, &x_shifted, &fx.labels);
            let cos = cosines(&at_clean, &at_shifted)
                .mean(Kind::Double)
                .double_value(&[]);
            ce + lambda * (1.0 - cos)
        });
    }

    #[test]
    fn config_is_checked() {
        let e = config_error("gradalign", "epsilon = 1.5");
        assert!(
            e.contains("[gradalign] epsilon") && e.contains("[0, 1]"),
            "{e}"
        );
        assert!(config_error("gradalign", "epsilon = \"-8/255\"").contains("gradalign"));
        assert!(config_error("gradalign", "lambda = -0.2").contains("[gradalign] lambda"));
        assert!(config_error("gradalign", "eps = 0.1").contains("eps"));
        let ok = GradAlign::from_config(
            sat_core::parse_config("gradalign", "epsilon = \"4/255\"").unwrap(),
        );
        assert_eq!(ok.map(|g| g.config.epsilon.0).ok(), Some(4.0 / 255.0));
    }

    #[test]
    fn inputs_are_not_modified() {
        let _rng = rng_lock();
        Fixture::new(45).assert_inputs_untouched(&mut gradalign(0.2, 0.1));
    }
}
