//! Saliency sources: per-batch maps that say where each image's evidence lies.
use crate::batch::Batch;
use crate::error::{Guarded, PluginError};
use crate::oracle::{Oracle, OracleRef};
use crate::tensor::RTensor;
use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RResult},
};
use tch::Tensor;

/// A saliency source as plugin authors write it.
///
/// `saliency` returns one map per sample, shaped `[N, 1, H, W]` (broadcast over
/// channels) or `[N, C, H, W]`, float32, on the batch's device, with values in
/// `[-1, 1]` (`+1` salient, `-1` not) or in `[0, 1]` for normalised attribution methods.
/// The host checks the shape, dtype, device and range of what comes back.
pub trait SaliencySource: Send + 'static {
    /// Computes the maps for `batch`; `oracle` answers questions about the model being
    /// trained (sources with their own teacher model may ignore it).
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError>;
}

/// The ABI-stable face of a [`SaliencySource`]. Calls never unwind.
#[sabi_trait]
pub trait SaliencySourceAbi: Send {
    /// See [`SaliencySource::saliency`].
    #[sabi(last_prefix_field)]
    fn saliency(&mut self, batch: &Batch, oracle: &OracleRef<'_>) -> RResult<RTensor, PluginError>;
}

/// An owned saliency source created by a plugin library.
pub type SaliencyBox = SaliencySourceAbi_TO<'static, RBox<()>>;

/// Adapts a [`SaliencySource`] to the ABI, catching panics (drop included) and naming it.
pub(crate) struct SaliencyAdapter(Guarded<dyn SaliencySource>);

impl SaliencyAdapter {
    /// The boundary object of `inner`, named `name`.
    pub(crate) fn boxed(name: &str, inner: Box<dyn SaliencySource>) -> SaliencyBox {
        SaliencySourceAbi_TO::from_value(
            Self(Guarded::new(format!("saliency source `{name}`"), inner)),
            TD_Opaque,
        )
    }
}

impl SaliencySourceAbi for SaliencyAdapter {
    fn saliency(&mut self, batch: &Batch, oracle: &OracleRef<'_>) -> RResult<RTensor, PluginError> {
        self.0
            .call(|s| s.saliency(batch, Oracle::new(oracle)).map(RTensor::new))
            .into()
    }
}
