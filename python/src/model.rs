//! A Python model as the host's model: any callable from images to logits (an
//! `nn.Module`, a TorchScript module, a function), called back with the GIL for every
//! forward pass. Its graph is libtorch's, so gradients flow through it to the input (the
//! oracle) or to its parameters (objectives) as through a model of the host's own.
use crate::tensor;
use pyo3::prelude::*;
use sat_core::{Gradient, Objective, OracleBackend, PluginError};
use std::sync::Mutex;
use tch::{nn::ModuleT, Kind, Tensor};

/// A Python callable used as a `tch` module. The first Python exception it raises (a
/// `KeyboardInterrupt` included: signals are checked before every call) is kept, later
/// calls return at once, and the caller re-raises it when the plugin's call ends.
pub struct PyModel {
    callable: Py<PyAny>,
    failure: Mutex<Option<PyErr>>,
}

impl std::fmt::Debug for PyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PyModel")
    }
}

impl PyModel {
    /// Wraps `callable`.
    pub fn new(callable: Py<PyAny>) -> Self {
        Self {
            callable,
            failure: Mutex::new(None),
        }
    }

    /// The Python object.
    pub fn callable(&self) -> &Py<PyAny> {
        &self.callable
    }

    /// One call of the model on `images`, with the GIL.
    fn call(&self, images: &Tensor) -> PyResult<Tensor> {
        Python::with_gil(|py| {
            py.check_signals()?;
            let x = tensor::to_python(py, images)?;
            let out = self.callable.call1(py, (x,))?;
            tensor::from_python(out.bind(py), "the model's output")
        })
    }

    /// The exception kept from a call, if any (taken: a second call returns `None`).
    pub fn take_failure(&self) -> Option<PyErr> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .map(|f| f.is_some())
            .unwrap_or(true)
    }
}

impl ModuleT for PyModel {
    /// The model's output, or on a Python exception an empty tensor, which the host's
    /// output check turns into an error (the exception itself is kept for the caller).
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let empty = || Tensor::zeros([0], (Kind::Float, xs.device()));
        if self.failed() {
            return empty();
        }
        match self.call(xs) {
            Ok(out) => out,
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                empty()
            }
        }
    }
}

/// The oracle of components that need no model (SAT, boxes, masks): every call is an
/// error saying which argument gives one.
pub struct NoModel {
    /// The keyword that provides a model (`teacher=`).
    pub keyword: &'static str,
}

impl NoModel {
    fn refuse(&self) -> PluginError {
        PluginError::invalid_input(format!(
            "this component queries a model; pass one with {}=",
            self.keyword
        ))
    }
}

impl OracleBackend for NoModel {
    fn logits(&self, _images: &Tensor) -> Result<Tensor, PluginError> {
        Err(self.refuse())
    }
    fn input_gradient(
        &self,
        _images: &Tensor,
        _objective: &Objective,
    ) -> Result<Gradient, PluginError> {
        Err(self.refuse())
    }
    fn num_classes(&self) -> u32 {
        0
    }
}
