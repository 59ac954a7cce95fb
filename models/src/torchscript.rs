//! A TorchScript model exported from PyTorch, evaluated and attacked like a native one.
use crate::ModelError;
use std::path::Path;
use tch::nn::ModuleT;
use tch::{CModule, Device, Tensor};

/// A TorchScript module in evaluation mode. It maps images in `[0, 1]` to logits; its
/// own normalisation, if any, is part of it.
#[derive(Debug)]
pub struct TorchScriptModel {
    module: CModule,
}

impl TorchScriptModel {
    /// Loads `path` onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ModelError> {
        let mut module = CModule::load_on_device(path, device).map_err(|e| {
            ModelError::Invalid(format!(
                "cannot load TorchScript model {}: {e}",
                path.display()
            ))
        })?;
        module.set_eval();
        Ok(Self { module })
    }
}

impl ModuleT for TorchScriptModel {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Tensor {
        // `ModuleT` has no error path. The host probes the model once at load time
        // (`probe`), and inside oracle calls the adapter turns a panic into an error.
        self.module
            .forward_ts(&[x])
            .unwrap_or_else(|e| panic!("TorchScript forward failed: {e}"))
    }
}
