//! Gradient-based sources: `gradient`, `guided-backprop`, `smoothgrad` and
//! `integrated-gradients`.
use crate::teacher::Teacher;
use crate::Output;
use sat_core::{component::Configurable, Batch, Oracle, PluginError, SaliencySource};
use sat_models::relu_backprop::ReluRule;
use tch::{Kind, Tensor};

/// Declares a source's configuration: the teacher keys every source shares, then its
/// own keys with their defaults.
macro_rules! source_config {
    ($(#[$doc:meta])* $name:ident { output: $oty:ty = $output:expr $(, $(#[$fdoc:meta])* $field:ident : $ty:ty = $default:expr)* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// `"self"`, a checkpoint of this project, or a TorchScript file.
            pub teacher: String,
            /// Architecture of a checkpoint teacher.
            pub arch: String,
            /// Width of a checkpoint teacher.
            pub width: i64,
            /// Classes of the teacher (unset: the host model's).
            pub classes: Option<i64>,
            /// The teacher's in-model normalisation mean.
            pub mean: Vec<f64>,
            /// The teacher's in-model normalisation std.
            pub std: Vec<f64>,
            /// `"label"` or `"predicted"`.
            pub target: crate::Target,
            /// How the method's result becomes a map.
            pub output: $oty,
            $( $(#[$fdoc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                let t = $crate::teacher::TeacherConfig::default();
                Self {
                    teacher: t.teacher,
                    arch: t.arch,
                    width: t.width,
                    classes: t.classes,
                    mean: t.mean,
                    std: t.std,
                    target: t.target,
                    output: $output,
                    $( $field: $default, )*
                }
            }
        }

        impl $name {
            /// The teacher part.
            pub fn teacher_config(&self) -> $crate::teacher::TeacherConfig {
                $crate::teacher::TeacherConfig {
                    teacher: self.teacher.clone(),
                    arch: self.arch.clone(),
                    width: self.width,
                    classes: self.classes,
                    mean: self.mean.clone(),
                    std: self.std.clone(),
                    target: self.target,
                }
            }
        }
    };
}
pub(crate) use source_config;

/// The teacher of `source` from `config`, its keys checked first.
fn teacher(source: &str, config: crate::teacher::TeacherConfig) -> Result<Teacher, PluginError> {
    crate::ranges::check_teacher(source, &config)?;
    Teacher::new(config)
}

source_config!(
    /// Configuration of `gradient`.
    GradientConfig { output: Output = Output::Sign }
);
source_config!(
    /// Configuration of `guided-backprop`.
    GuidedConfig { output: Output = Output::Sign }
);
source_config!(
    /// Configuration of `smoothgrad`.
    SmoothGradConfig {
        output: Output = Output::Sign,
        /// Noisy copies averaged per image.
        samples: i64 = 16,
        /// Standard deviation of the Gaussian noise, in pixel units of `[0, 1]` images.
        sigma: f64 = 0.15,
    }
);
source_config!(
    /// Configuration of `integrated-gradients`.
    IntegratedGradientsConfig {
        output: Output = Output::Sign,
        /// Points on the path from the baseline to the image (midpoint rule).
        steps: i64 = 32,
        /// The baseline image's constant value (0 = black).
        baseline: f64 = 0.0,
        /// Path points evaluated per teacher call, bounding memory.
        batch_size: i64 = 256,
    }
);

/// The vanilla input gradient of the target logit.
pub struct Gradient {
    teacher: Teacher,
    output: Output,
}

impl Configurable for Gradient {
    type Config = GradientConfig;
    fn from_config(c: GradientConfig) -> Result<Self, PluginError> {
        Ok(Self {
            teacher: teacher("gradient", c.teacher_config())?,
            output: c.output,
        })
    }
}

impl SaliencySource for Gradient {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let x = batch.images().shallow_clone();
        let target = self.teacher.targets(&x, &batch.labels(), oracle)?;
        let (g, _) = self
            .teacher
            .gradient(&x, &target, ReluRule::Vanilla, oracle, "gradient")?;
        self.output.apply(&g)
    }
}

/// Guided backpropagation: negative gradients stop at every ReLU.
pub struct GuidedBackprop {
    teacher: Teacher,
    output: Output,
}

impl Configurable for GuidedBackprop {
    type Config = GuidedConfig;
    fn from_config(c: GuidedConfig) -> Result<Self, PluginError> {
        Ok(Self {
            teacher: teacher("guided-backprop", c.teacher_config())?,
            output: c.output,
        })
    }
}

impl GuidedBackprop {
    /// The raw guided-backprop attributions `[N, C, H, W]`.
    pub fn attributions(
        teacher: &mut Teacher,
        batch: &Batch,
        oracle: Oracle<'_, '_>,
        what: &str,
    ) -> Result<Tensor, PluginError> {
        let x = batch.images().shallow_clone();
        let target = teacher.targets(&x, &batch.labels(), oracle)?;
        Ok(teacher
            .gradient(&x, &target, ReluRule::Guided, oracle, what)?
            .0)
    }
}

impl SaliencySource for GuidedBackprop {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let a = Self::attributions(&mut self.teacher, batch, oracle, "guided-backprop")?;
        self.output.apply(&a)
    }
}

/// SmoothGrad: the gradient averaged over noisy copies of the image.
pub struct SmoothGrad {
    teacher: Teacher,
    config: SmoothGradConfig,
}

impl Configurable for SmoothGrad {
    type Config = SmoothGradConfig;
    fn from_config(c: SmoothGradConfig) -> Result<Self, PluginError> {
        crate::ranges::check("smoothgrad", &[("samples", c.samples)])?;
        if !(c.sigma >= 0.0 && c.sigma.is_finite()) {
            return Err(PluginError::config(format!(
                "[smoothgrad] sigma must be finite and >= 0, got {}",
                c.sigma
            )));
        }
        Ok(Self {
            teacher: teacher("smoothgrad", c.teacher_config())?,
            config: c,
        })
    }
}

impl SmoothGrad {
    /// The averaged gradients `[N, C, H, W]`.
    pub fn attributions(
        &mut self,
        batch: &Batch,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        let x = batch.images().shallow_clone();
        let target = self.teacher.targets(&x, &batch.labels(), oracle)?;
        let mut sum = x.f_zeros_like()?;
        let draws = batch.draws();
        for i in 0..self.config.samples {
            let noisy = if self.config.sigma > 0.0 {
                let noise = draws.normal_like(&format!("smoothgrad.{i}"), &x)?;
                x.f_add(&noise.f_mul_scalar(self.config.sigma)?)?
            } else {
                x.shallow_clone()
            };
            let (g, _) =
                self.teacher
                    .gradient(&noisy, &target, ReluRule::Vanilla, oracle, "smoothgrad")?;
            sum = sum.f_add(&g)?;
        }
        Ok(sum.f_div_scalar(self.config.samples as f64)?)
    }
}

impl SaliencySource for SmoothGrad {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let a = self.attributions(batch, oracle)?;
        self.config.output.apply(&a)
    }
}

/// Integrated Gradients from a constant baseline, midpoint rule.
pub struct IntegratedGradients {
    teacher: Teacher,
    config: IntegratedGradientsConfig,
}

impl Configurable for IntegratedGradients {
    type Config = IntegratedGradientsConfig;
    fn from_config(c: IntegratedGradientsConfig) -> Result<Self, PluginError> {
        crate::ranges::check(
            "integrated-gradients",
            &[("steps", c.steps), ("batch_size", c.batch_size)],
        )?;
        if !c.baseline.is_finite() {
            return Err(PluginError::config(format!(
                "[integrated-gradients] baseline must be finite, got {}",
                c.baseline
            )));
        }
        Ok(Self {
            teacher: teacher("integrated-gradients", c.teacher_config())?,
            config: c,
        })
    }
}

impl IntegratedGradients {
    /// `(x − x′) ⊙ mean_k ∇f(x′ + α_k (x − x′))`, `α_k = (k − ½) / steps`: attributions
    /// that sum to about `f(x) − f(x′)` per sample (completeness).
    pub fn attributions(
        &mut self,
        batch: &Batch,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        let x = batch.images().shallow_clone();
        let target = self.teacher.targets(&x, &batch.labels(), oracle)?;
        let baseline = x.f_full_like(self.config.baseline)?;
        let delta = x.f_sub(&baseline)?;
        let n = x.size()[0];
        let steps = self.config.steps;
        // Path points in chunks of at most `batch_size` images: (step, sample) pairs.
        let per_chunk = (self.config.batch_size / n.max(1)).max(1);
        let mut sum = x.f_zeros_like()?;
        let mut k = 0;
        while k < steps {
            let m = per_chunk.min(steps - k);
            let alphas = Tensor::f_arange_start(k, k + m, (Kind::Float, x.device()))?
                .f_add_scalar(0.5)?
                .f_div_scalar(steps as f64)?
                .f_reshape([m, 1, 1, 1, 1])?;
            let points = baseline
                .f_unsqueeze(0)?
                .f_add(&alphas.f_mul(&delta.f_unsqueeze(0)?)?)?
                .f_flatten(0, 1)?;
            let targets = target.f_repeat([m])?;
            let (g, _) = self.teacher.gradient(
                &points,
                &targets,
                ReluRule::Vanilla,
                oracle,
                "integrated-gradients",
            )?;
            let mut shape = vec![m];
            shape.extend(x.size());
            sum = sum.f_add(&g.f_reshape(shape)?.f_sum_dim_intlist(
                [0i64].as_slice(),
                false,
                Kind::Float,
            )?)?;
            k += m;
        }
        Ok(delta.f_mul(&sum)?.f_div_scalar(steps as f64)?)
    }
}

impl SaliencySource for IntegratedGradients {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let a = self.attributions(batch, oracle)?;
        self.config.output.apply(&a)
    }
}

sat_core::register_saliency!(
    Gradient,
    name = "gradient",
    description = "Teacher's input gradient of the target logit (sign by default)",
);
sat_core::register_saliency!(
    GuidedBackprop,
    name = "guided-backprop",
    description = "Guided backpropagation of a checkpoint teacher (sign by default)",
);
sat_core::register_saliency!(
    SmoothGrad,
    name = "smoothgrad",
    description = "SmoothGrad: the teacher's gradient averaged over Gaussian-noised copies",
);
sat_core::register_saliency!(
    IntegratedGradients,
    name = "integrated-gradients",
    description = "Integrated Gradients from a constant baseline (midpoint rule, bounded batches)",
);
