//! Saliency sources: per-batch maps that say where each image's evidence lies.
use crate::batch::Batch;
use crate::error::{catch, PluginError};
use crate::oracle::{Oracle, OracleRef};
use crate::tensor::RTensor;
use abi_stable::{
    sabi_trait,
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

/// Adapts a [`SaliencySource`] to the ABI, catching panics and naming the component.
pub(crate) struct SaliencyAdapter {
    pub(crate) name: String,
    pub(crate) inner: Box<dyn SaliencySource>,
}

impl SaliencySourceAbi for SaliencyAdapter {
    fn saliency(&mut self, batch: &Batch, oracle: &OracleRef<'_>) -> RResult<RTensor, PluginError> {
        let inner = &mut self.inner;
        catch(&format!("saliency source `{}`", self.name), || {
            inner.saliency(batch, Oracle::new(oracle)).map(RTensor::new)
        })
        .into()
    }
}
