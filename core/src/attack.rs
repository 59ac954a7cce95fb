//! Attacks: turn a batch into perturbed inputs, for training or for evaluation.
use crate::batch::Batch;
use crate::error::{Guarded, PluginError};
use crate::oracle::{Oracle, OracleRef};
use crate::tensor::RTensor;
use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, ROption, RResult},
    StableAbi,
};
use tch::Tensor;

/// The norm of an attack's perturbation budget.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// ℓ∞.
    Linf,
    /// ℓ2.
    L2,
}

impl Norm {
    /// `"linf"` or `"l2"`, as written in configs and `metrics.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Linf => "linf",
            Norm::L2 => "l2",
        }
    }
}

/// The threat model an attack works in, as reported in evaluation results.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct ThreatModel {
    /// Norm of the budget.
    pub norm: Norm,
    /// Radius of the budget in `[0, 1]` pixel units.
    pub epsilon: f64,
    /// Gradient steps per input (0 for gradient-free perturbations).
    pub steps: u32,
}

/// An attack as plugin authors write it.
///
/// `perturb` returns `x_adv` shaped like `batch.images`, float32, on the same device,
/// inside `[0, 1]` and inside the threat model's ball around the images. It must not
/// modify `batch.images` and must leave the model's mode and parameters alone (the
/// oracle already runs the model in eval mode without parameter gradients).
pub trait Attack: Send + 'static {
    /// Whether `batch.saliency` must be filled in (the host then asks the configured
    /// saliency source first).
    fn requires_saliency(&self) -> bool {
        false
    }
    /// The budget this attack works within.
    fn threat_model(&self) -> ThreatModel;
    /// Computes the adversarial inputs for `batch`.
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError>;
    /// For a targeted attack, the target class of every image of the last `perturb`
    /// call (`[N]` int64, see [`Target`](crate::target::Target)); `None` when untargeted.
    fn targets(&self) -> Option<Tensor> {
        None
    }
}

/// The ABI-stable face of an [`Attack`]. Calls never unwind: a panic is an error.
#[sabi_trait]
pub trait AttackAbi: Send {
    /// See [`Attack::requires_saliency`].
    fn requires_saliency(&self) -> RResult<bool, PluginError>;
    /// See [`Attack::threat_model`].
    fn threat_model(&self) -> RResult<ThreatModel, PluginError>;
    /// See [`Attack::perturb`].
    #[sabi(last_prefix_field)]
    fn perturb(&mut self, batch: &Batch, oracle: &OracleRef<'_>) -> RResult<RTensor, PluginError>;
    /// See [`Attack::targets`].
    fn targets(&self) -> RResult<ROption<RTensor>, PluginError>;
}

/// An owned attack created by a plugin library.
pub type AttackBox = AttackAbi_TO<'static, RBox<()>>;

/// Adapts an [`Attack`] to the ABI, catching panics (drop included) and naming it.
pub(crate) struct AttackAdapter(Guarded<dyn Attack>);

impl AttackAdapter {
    /// The boundary object of `inner`, named `name`.
    pub(crate) fn boxed(name: &str, inner: Box<dyn Attack>) -> AttackBox {
        AttackAbi_TO::from_value(
            Self(Guarded::new(format!("attack `{name}`"), inner)),
            TD_Opaque,
        )
    }
}

impl AttackAbi for AttackAdapter {
    fn requires_saliency(&self) -> RResult<bool, PluginError> {
        self.0.call_ref(|a| Ok(a.requires_saliency())).into()
    }
    fn threat_model(&self) -> RResult<ThreatModel, PluginError> {
        self.0.call_ref(|a| Ok(a.threat_model())).into()
    }
    fn perturb(&mut self, batch: &Batch, oracle: &OracleRef<'_>) -> RResult<RTensor, PluginError> {
        self.0
            .call(|a| a.perturb(batch, Oracle::new(oracle)).map(RTensor::new))
            .into()
    }
    fn targets(&self) -> RResult<ROption<RTensor>, PluginError> {
        self.0
            .call_ref(|a| Ok(a.targets().map(RTensor::new).into()))
            .into()
    }
}
