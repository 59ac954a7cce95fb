//! The host callback: plugins ask the host's model for logits and input gradients.
use crate::error::{catch, PluginError};
use crate::tensor::RTensor;
use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    sabi_types::RRef,
    std_types::{ROption, RResult},
    StableAbi,
};
use tch::Tensor;

/// The scalar whose input gradient a plugin asks for. Every objective is a per-sample
/// value (shape `[N]`); the gradient is that of their sum, so samples do not interact.
#[repr(u8)]
#[derive(StableAbi, Debug)]
pub enum Objective {
    /// Cross-entropy of the model's logits against `labels` (`[N]`, int64).
    CrossEntropy {
        /// Target classes.
        labels: RTensor,
    },
    /// `KL(softmax(reference_logits) ‖ softmax(f(x)))` (TRADES' inner maximisation).
    KlDivergence {
        /// Logits `[N, K]` of the reference (usually clean) inputs.
        reference_logits: RTensor,
    },
    /// The logit of one class per sample (`classes`: `[N]`, int64).
    Logit {
        /// Class whose logit is differentiated.
        classes: RTensor,
    },
    /// Carlini-Wagner margin `max_{j≠y} z_j − z_y` (`labels`: `[N]`, int64).
    Margin {
        /// True classes.
        labels: RTensor,
    },
    /// `Σₖ log softmax(z)ₖ`, the sum of the log-probabilities of every class (the
    /// quantity whose input gradient Right for the Right Reasons penalises).
    LogProbabilitySum,
    /// The Difference of Logits Ratio loss of Croce & Hein (2020), as AutoAttack computes
    /// it: untargeted `−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 10⁻¹²)` (at least 3
    /// classes), or with `targets` `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 10⁻¹²)`
    /// (at least 4 classes), `π` ordering the logits from the largest.
    Dlr {
        /// True classes `[N]`, int64.
        labels: RTensor,
        /// Target classes `[N]`, int64, for the targeted loss.
        targets: ROption<RTensor>,
    },
    /// `Σₖ w_nk z_nk`, a fixed linear combination of each sample's logits
    /// (`weights`: `[N, K]`, float32), e.g. `z_t − z_y` for FAB.
    WeightedLogits {
        /// Per-sample weights of the logits.
        weights: RTensor,
    },
}

impl Objective {
    /// Cross-entropy against `labels` (shares storage, no copy).
    pub fn cross_entropy(labels: &Tensor) -> Self {
        Self::CrossEntropy {
            labels: RTensor::from_ref(labels),
        }
    }
    /// KL divergence from the softmax of `reference_logits`.
    pub fn kl_divergence(reference_logits: &Tensor) -> Self {
        Self::KlDivergence {
            reference_logits: RTensor::from_ref(reference_logits),
        }
    }
    /// The logit of `classes`.
    pub fn logit(classes: &Tensor) -> Self {
        Self::Logit {
            classes: RTensor::from_ref(classes),
        }
    }
    /// The CW margin against `labels`.
    pub fn margin(labels: &Tensor) -> Self {
        Self::Margin {
            labels: RTensor::from_ref(labels),
        }
    }
    /// The sum over classes of the log-probabilities.
    pub fn log_probability_sum() -> Self {
        Self::LogProbabilitySum
    }
    /// The untargeted DLR loss against `labels`.
    pub fn dlr(labels: &Tensor) -> Self {
        Self::Dlr {
            labels: RTensor::from_ref(labels),
            targets: ROption::RNone,
        }
    }
    /// The targeted DLR loss against `labels`, towards `targets`.
    pub fn dlr_targeted(labels: &Tensor, targets: &Tensor) -> Self {
        Self::Dlr {
            labels: RTensor::from_ref(labels),
            targets: ROption::RSome(RTensor::from_ref(targets)),
        }
    }
    /// `Σₖ weights_nk · z_nk`.
    pub fn weighted_logits(weights: &Tensor) -> Self {
        Self::WeightedLogits {
            weights: RTensor::from_ref(weights),
        }
    }
}

/// Objective values, their input gradient and the logits, as returned across the boundary.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct GradientAbi {
    /// Per-sample objective, `[N]`.
    pub value: RTensor,
    /// Gradient of the summed objective with respect to the input, shaped like the input.
    pub gradient: RTensor,
    /// The model's logits on the input, `[N, K]`.
    pub logits: RTensor,
}

/// [`GradientAbi`] with plain tensors.
#[derive(Debug)]
pub struct Gradient {
    /// Per-sample objective, `[N]`.
    pub value: Tensor,
    /// Gradient of the summed objective with respect to the input.
    pub gradient: Tensor,
    /// The model's logits on the input, `[N, K]`.
    pub logits: Tensor,
}

impl From<GradientAbi> for Gradient {
    fn from(g: GradientAbi) -> Self {
        Self {
            value: g.value.into_tensor(),
            gradient: g.gradient.into_tensor(),
            logits: g.logits.into_tensor(),
        }
    }
}

impl From<Gradient> for GradientAbi {
    fn from(g: Gradient) -> Self {
        Self {
            value: g.value.into(),
            gradient: g.gradient.into(),
            logits: g.logits.into(),
        }
    }
}

/// The host's model as an ABI-stable trait object, for the [`Oracle`] (attacks, saliency
/// sources) and the [`TrainingModel`] (objectives). Calls never unwind.
#[sabi_trait]
pub trait OracleAbi {
    /// Logits `[N, K]` of the model on `images`: without gradient in eval mode for the
    /// oracle; in training mode, differentiable in the parameters, for the training model.
    fn logits(&self, images: RTensor) -> RResult<RTensor, PluginError>;
    /// Objective, gradient and logits at `images`: in eval mode with the parameters
    /// receiving no gradient for the oracle; in training mode with `create_graph` for the
    /// training model.
    fn input_gradient(
        &self,
        images: RTensor,
        objective: Objective,
    ) -> RResult<GradientAbi, PluginError>;
    /// Number of classes of the model.
    #[sabi(last_prefix_field)]
    fn num_classes(&self) -> RResult<u32, PluginError>;
}

/// A borrowed oracle trait object, as handed to plugins.
pub type OracleRef<'a> = OracleAbi_TO<'a, RRef<'a, ()>>;

/// What the host implements to answer oracle calls (plain Rust, may panic: the
/// adapter catches it).
pub trait OracleBackend {
    /// See [`OracleAbi::logits`].
    fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError>;
    /// See [`OracleAbi::input_gradient`].
    fn input_gradient(
        &self,
        images: &Tensor,
        objective: &Objective,
    ) -> Result<Gradient, PluginError>;
    /// See [`OracleAbi::num_classes`].
    fn num_classes(&self) -> u32;
}

/// Wraps an [`OracleBackend`] so that it can be handed across the boundary.
pub struct OracleAdapter<B>(pub B);

impl<B: OracleBackend> OracleAbi for OracleAdapter<B> {
    fn logits(&self, images: RTensor) -> RResult<RTensor, PluginError> {
        catch("the host's oracle", || {
            self.0.logits(&images.into_tensor()).map(RTensor::new)
        })
        .into()
    }
    fn input_gradient(
        &self,
        images: RTensor,
        objective: Objective,
    ) -> RResult<GradientAbi, PluginError> {
        catch("the host's oracle", || {
            self.0
                .input_gradient(&images.into_tensor(), &objective)
                .map(GradientAbi::from)
        })
        .into()
    }
    fn num_classes(&self) -> RResult<u32, PluginError> {
        catch("the host's oracle", || Ok(self.0.num_classes())).into()
    }
}

impl<B: OracleBackend> OracleAdapter<B> {
    /// The trait object plugins receive, borrowing this adapter.
    pub fn as_ref(&self) -> OracleRef<'_> {
        OracleAbi_TO::from_ptr(self, TD_Opaque)
    }
}

/// The oracle as plugin code uses it: plain tensors in and out.
#[derive(Clone, Copy)]
pub struct Oracle<'r, 'o> {
    inner: &'r OracleRef<'o>,
}

impl<'r, 'o> Oracle<'r, 'o> {
    /// Wraps the trait object received across the boundary.
    pub fn new(inner: &'r OracleRef<'o>) -> Self {
        Self { inner }
    }
    /// The trait object itself, to hand on to another component (an attack that runs
    /// other attacks, such as AutoAttack).
    pub fn as_abi(&self) -> &'r OracleRef<'o> {
        self.inner
    }
    /// Logits `[N, K]` on `images` (no gradient, eval mode).
    pub fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        self.inner
            .logits(RTensor::from_ref(images))
            .into_result()
            .map(RTensor::into_tensor)
    }
    /// Objective value, input gradient and logits at `images`.
    pub fn input_gradient(
        &self,
        images: &Tensor,
        objective: Objective,
    ) -> Result<Gradient, PluginError> {
        self.inner
            .input_gradient(RTensor::from_ref(images), objective)
            .into_result()
            .map(Gradient::from)
    }
    /// Number of classes of the model.
    pub fn num_classes(&self) -> Result<u32, PluginError> {
        self.inner.num_classes().into_result()
    }
}

/// Evaluates `objective` on `forward(images)` and its gradient with respect to
/// `images`, with autograd. Used by oracle backends; the caller is responsible for
/// putting the model in eval mode and for keeping parameter gradients out (parameters
/// that require grad do accumulate `.grad` unless the caller freezes or zeroes them).
pub fn objective_gradient(
    forward: impl FnOnce(&Tensor) -> Result<Tensor, PluginError>,
    images: &Tensor,
    objective: &Objective,
) -> Result<Gradient, PluginError> {
    let g = gradient_with_graph(forward, images, objective, false)?;
    Ok(Gradient {
        value: g.value.detach(),
        gradient: g.gradient,
        logits: g.logits.detach(),
    })
}

/// As [`objective_gradient`], but keeping the graph (`create_graph`): the returned
/// value, logits and input gradient stay differentiable in whatever `forward` depends
/// on (the model's parameters), for losses that penalise input gradients (double
/// backpropagation). Used by training-model backends.
pub fn differentiable_gradient(
    forward: impl FnOnce(&Tensor) -> Result<Tensor, PluginError>,
    images: &Tensor,
    objective: &Objective,
) -> Result<Gradient, PluginError> {
    gradient_with_graph(forward, images, objective, true)
}

fn gradient_with_graph(
    forward: impl FnOnce(&Tensor) -> Result<Tensor, PluginError>,
    images: &Tensor,
    objective: &Objective,
    create_graph: bool,
) -> Result<Gradient, PluginError> {
    let x = images.detach().f_set_requires_grad(true)?;
    let logits = tch::with_grad(|| forward(&x))?;
    let value = tch::with_grad(|| objective_value(&logits, objective))?;
    if !value.requires_grad() {
        return Err(PluginError::invalid_input(
            "the model's output does not depend on its input through autograd",
        ));
    }
    let total = tch::with_grad(|| value.f_sum(value.kind()))?;
    let grads = tch::with_grad(|| {
        Tensor::f_run_backward(&[total], &[&x], create_graph, create_graph)
    })?;
    let gradient = grads
        .into_iter()
        .next()
        .ok_or_else(|| PluginError::runtime("autograd returned no gradient"))?;
    Ok(Gradient {
        value,
        gradient,
        logits,
    })
}

/// The per-sample value `[N]` of `objective` given `logits` `[N, K]`.
pub fn objective_value(logits: &Tensor, objective: &Objective) -> Result<Tensor, PluginError> {
    let n = logits.size().first().copied().unwrap_or(0);
    let check = |t: &Tensor, what: &str| -> Result<(), PluginError> {
        if t.size() != [n] {
            return Err(PluginError::invalid_input(format!(
                "{what} must be [{n}], got {:?}",
                t.size()
            )));
        }
        Ok(())
    };
    Ok(match objective {
        Objective::CrossEntropy { labels } => {
            let labels = labels.view();
            check(&labels, "labels")?;
            let logp = logits.f_log_softmax(-1, logits.kind())?;
            logp.f_gather(1, &labels.f_unsqueeze(1)?, false)?
                .f_squeeze_dim(1)?
                .f_neg()?
        }
        Objective::KlDivergence { reference_logits } => {
            let reference = reference_logits.view();
            if reference.size() != logits.size() {
                return Err(PluginError::invalid_input(format!(
                    "reference logits must be {:?}, got {:?}",
                    logits.size(),
                    reference.size()
                )));
            }
            let p_log = reference.f_log_softmax(-1, logits.kind())?;
            let q_log = logits.f_log_softmax(-1, logits.kind())?;
            p_log
                .f_exp()?
                .f_mul(&p_log.f_sub(&q_log)?)?
                .f_sum_dim_intlist(-1, false, logits.kind())?
        }
        Objective::Logit { classes } => {
            let classes = classes.view();
            check(&classes, "classes")?;
            logits
                .f_gather(1, &classes.f_unsqueeze(1)?, false)?
                .f_squeeze_dim(1)?
        }
        Objective::Margin { labels } => {
            let labels = labels.view();
            check(&labels, "labels")?;
            let index = labels.f_unsqueeze(1)?;
            let true_logit = logits.f_gather(1, &index, false)?.f_squeeze_dim(1)?;
            let masked = logits.f_scatter_value(1, &index, f64::NEG_INFINITY)?;
            masked.f_amax(-1, false)?.f_sub(&true_logit)?
        }
        Objective::LogProbabilitySum => logits
            .f_log_softmax(-1, logits.kind())?
            .f_sum_dim_intlist(-1, false, logits.kind())?,
        Objective::Dlr { labels, targets } => {
            let labels = labels.view();
            check(&labels, "labels")?;
            let targets = targets.as_ref().map(|t| t.view()).into_option();
            if let Some(t) = &targets {
                check(t, "targets")?;
            }
            dlr(logits, &labels, targets.as_deref())?
        }
        Objective::WeightedLogits { weights } => {
            let weights = weights.view();
            if weights.size() != logits.size() {
                return Err(PluginError::invalid_input(format!(
                    "logit weights must be {:?}, got {:?}",
                    logits.size(),
                    weights.size()
                )));
            }
            logits
                .f_mul(&weights.f_to_kind(logits.kind())?)?
                .f_sum_dim_intlist(-1, false, logits.kind())?
        }
    })
}

/// The DLR loss of [`Objective::Dlr`].
fn dlr(logits: &Tensor, labels: &Tensor, targets: Option<&Tensor>) -> Result<Tensor, PluginError> {
    let classes = logits.size().get(1).copied().unwrap_or(0);
    let needed = if targets.is_some() { 4 } else { 3 };
    if classes < needed {
        return Err(PluginError::invalid_input(format!(
            "the DLR loss needs at least {needed} classes, the model has {classes}"
        )));
    }
    let (sorted, order) = logits.f_sort(1, false)?;
    let column = |i: i64| sorted.f_select(1, classes - i);
    let own = logits.f_gather(1, &labels.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
    let (difference, scale) = match targets {
        None => {
            // The largest logit other than the label's.
            let top_is_label = order
                .f_select(1, classes - 1)?
                .f_eq_tensor(labels)?
                .f_to_kind(logits.kind())?;
            let other = column(2)?
                .f_mul(&top_is_label)?
                .f_add(&column(1)?.f_mul(&top_is_label.f_neg()?.f_add_scalar(1.0)?)?)?;
            (own.f_sub(&other)?, column(1)?.f_sub(&column(3)?)?)
        }
        Some(t) => {
            let target = logits.f_gather(1, &t.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
            let third_fourth = column(3)?.f_add(&column(4)?)?.f_mul_scalar(0.5)?;
            (own.f_sub(&target)?, column(1)?.f_sub(&third_fourth)?)
        }
    };
    Ok(difference.f_div(&scale.f_add_scalar(1e-12)?)?.f_neg()?)
}

/// The model being trained, as training objectives see it: forward passes in training
/// mode (batch-norm statistics update, mixed precision when the run uses it) whose
/// results stay differentiable in the model's parameters, and input gradients taken
/// with `create_graph` (double backpropagation).
///
/// It crosses the boundary as the same ABI object as the [`Oracle`]: the host hands
/// objectives a backend with training semantics (built on [`differentiable_gradient`])
/// and attacks one with evaluation semantics; this wrapper names the difference for
/// plugin code.
#[derive(Clone, Copy)]
pub struct TrainingModel<'r, 'o> {
    inner: Oracle<'r, 'o>,
}

impl<'r, 'o> TrainingModel<'r, 'o> {
    /// Wraps the trait object received across the boundary.
    pub fn new(inner: &'r OracleRef<'o>) -> Self {
        Self {
            inner: Oracle::new(inner),
        }
    }
    /// Logits `[N, K]` in training mode, differentiable in the parameters.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        self.inner.logits(images)
    }
    /// Objective value, input gradient and logits at `images`, all differentiable in
    /// the parameters.
    pub fn input_gradient(
        &self,
        images: &Tensor,
        objective: Objective,
    ) -> Result<Gradient, PluginError> {
        self.inner.input_gradient(images, objective)
    }
    /// Number of classes of the model.
    pub fn num_classes(&self) -> Result<u32, PluginError> {
        self.inner.num_classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&t.to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn dlr_matches_its_closed_form() {
        // Row 0: label 2 is the top logit (4); the runner-up is 3, the third 1.
        // Row 1: label 0 (logit 1) is not on top (5): other = 5, scale = 5 − 2.
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 4.0, 0.0, 1.0, 5.0, 2.0, -1.0])
            .reshape([2, 4]);
        let labels = Tensor::from_slice(&[2i64, 0]);
        let untargeted = objective_value(&logits, &Objective::dlr(&labels)).unwrap();
        let expected = [-(4.0 - 3.0) / (4.0 - 1.0), -(1.0 - 5.0) / (5.0 - 1.0)];
        for (got, want) in values(&untargeted).iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Targeted towards 3 and 2: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2).
        let targets = Tensor::from_slice(&[3i64, 2]);
        let targeted =
            objective_value(&logits, &Objective::dlr_targeted(&labels, &targets)).unwrap();
        let expected = [-(4.0 - 0.0) / (4.0 - 0.5), -(1.0 - 2.0) / (5.0 - 0.0)];
        for (got, want) in values(&targeted).iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        let two = Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]);
        let err = objective_value(&two, &Objective::dlr(&Tensor::from_slice(&[0i64])));
        assert!(err.unwrap_err().to_string().contains("at least 3 classes"));
    }

    #[test]
    fn weighted_logits_are_a_linear_combination() {
        let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let weights = Tensor::from_slice(&[1.0f32, -1.0, 0.5, 0.0]).reshape([2, 2]);
        let v = objective_value(&logits, &Objective::weighted_logits(&weights)).unwrap();
        assert_eq!(values(&v), vec![-1.0, 1.5]);
        let wrong = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
        assert!(objective_value(&logits, &Objective::weighted_logits(&wrong)).is_err());
    }
}
