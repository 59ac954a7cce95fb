//! Training objectives: the loss the host minimises on each batch, given the clean
//! batch, the attack's inputs and the model being trained.
//!
//! A training mode is an attack (which makes the inputs) × an objective (which turns
//! them into a loss) × saliency sources (which feed either). Cross-entropy, TRADES,
//! Right for the Right Reasons, input-gradient regularisation and GradAlign are
//! objectives; a plugin can add others.
use crate::batch::Batch;
use crate::error::{Guarded, PluginError};
use crate::oracle::{OracleRef, TrainingModel};
use crate::tensor::RTensor;
use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RResult},
    StableAbi,
};
use tch::Tensor;

/// The loss of one batch.
#[derive(Debug)]
pub struct Loss {
    /// The scalar loss, differentiable in the model's parameters (the host calls
    /// backward on it).
    pub value: Tensor,
    /// Logits `[N, K]` of the model on the attack's inputs, for the training accuracy.
    pub logits: Tensor,
}

/// [`Loss`] as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct LossAbi {
    /// See [`Loss::value`].
    pub value: RTensor,
    /// See [`Loss::logits`].
    pub logits: RTensor,
}

impl From<Loss> for LossAbi {
    fn from(l: Loss) -> Self {
        Self {
            value: l.value.into(),
            logits: l.logits.into(),
        }
    }
}

impl From<LossAbi> for Loss {
    fn from(l: LossAbi) -> Self {
        Self {
            value: l.value.into_tensor(),
            logits: l.logits.into_tensor(),
        }
    }
}

/// A training objective as plugin authors write it.
///
/// `loss` receives the clean batch (`batch.images`, labels, annotations, and
/// `batch.saliency` when [`requires_saliency`](Self::requires_saliency) is true), the
/// model's inputs for this batch (`inputs`: the attack's output, or the clean images in
/// standard training) and the model being trained. It returns a scalar loss whose graph
/// reaches the model's parameters, and the logits on `inputs`. It must not modify the
/// batch or the inputs in place.
pub trait TrainingObjective: Send + 'static {
    /// Whether `batch.saliency` must be filled in.
    fn requires_saliency(&self) -> bool {
        false
    }
    /// The loss of the batch.
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: TrainingModel<'_, '_>,
    ) -> Result<Loss, PluginError>;
}

/// The ABI-stable face of a [`TrainingObjective`]. Calls never unwind.
#[sabi_trait]
pub trait ObjectiveAbi: Send {
    /// See [`TrainingObjective::requires_saliency`].
    fn requires_saliency(&self) -> RResult<bool, PluginError>;
    /// See [`TrainingObjective::loss`].
    #[sabi(last_prefix_field)]
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: RTensor,
        model: &OracleRef<'_>,
    ) -> RResult<LossAbi, PluginError>;
}

/// An owned objective created by a plugin library.
pub type ObjectiveBox = ObjectiveAbi_TO<'static, RBox<()>>;

/// Adapts a [`TrainingObjective`] to the ABI, catching panics (drop included).
pub(crate) struct ObjectiveAdapter(Guarded<dyn TrainingObjective>);

impl ObjectiveAdapter {
    /// The boundary object of `inner`, named `name`.
    pub(crate) fn boxed(name: &str, inner: Box<dyn TrainingObjective>) -> ObjectiveBox {
        ObjectiveAbi_TO::from_value(
            Self(Guarded::new(format!("objective `{name}`"), inner)),
            TD_Opaque,
        )
    }
}

impl ObjectiveAbi for ObjectiveAdapter {
    fn requires_saliency(&self) -> RResult<bool, PluginError> {
        self.0.call_ref(|o| Ok(o.requires_saliency())).into()
    }
    fn loss(
        &mut self,
        batch: &Batch,
        inputs: RTensor,
        model: &OracleRef<'_>,
    ) -> RResult<LossAbi, PluginError> {
        let inputs = inputs.into_tensor();
        self.0
            .call(|o| o.loss(batch, &inputs, TrainingModel::new(model)).map(LossAbi::from))
            .into()
    }
}
