//! The host's answers to plugins' model queries: the oracle (attacks and saliency
//! sources: eval mode, input gradients only) and the training model (objectives:
//! training mode, differentiable in the parameters).
//!
//! Once a stop was requested (Ctrl-C, SIGTERM: [`crate::interrupt::stop_now`]) both
//! refuse every call with [`stopping`]'s error, so a plugin's loop — however many steps, restarts or
//! queries it was given — ends at its next model call; the host then reads the plugin's
//! error as the interruption ([`crate::interrupt::is_interrupted`]).
use sat_core::{
    differentiable_gradient, objective_gradient, Gradient, Objective, OracleBackend, PluginError,
};
use tch::{nn::ModuleT, Kind, Tensor};

/// Answers oracle calls with `model` in eval mode (`forward_t(.., false)`); gradients
/// are taken with respect to the input only, so parameters accumulate nothing.
pub struct ModelOracle<'a> {
    /// The model.
    pub model: &'a dyn ModuleT,
    /// Its number of classes.
    pub classes: u32,
}

impl ModelOracle<'_> {
    /// The model's output for `images`, checked (floating, `[N, classes]`, attached to
    /// the graph when a gradient is taken) before anything differentiates through it.
    fn checked(
        &self,
        out: Tensor,
        images: &Tensor,
        needs_grad: bool,
    ) -> Result<Tensor, PluginError> {
        let batch = images.size().first().copied().unwrap_or(0);
        sat_models::check_logits(&out, batch, self.classes as i64, needs_grad)
            .map_err(|e| PluginError::runtime(format!("the host's model: {e}")))?;
        Ok(out)
    }
}

/// `Err` once a stop was requested: the error every model call of a plugin gets from
/// then on.
pub fn stopping() -> Result<(), PluginError> {
    if crate::interrupt::stop_now() {
        Err(PluginError::runtime(format!(
            "the host is stopping ({}): no more model calls",
            crate::interrupt::signal_name()
        )))
    } else {
        Ok(())
    }
}

impl OracleBackend for ModelOracle<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        stopping()?;
        let out = tch::no_grad(|| self.model.forward_t(images, false));
        self.checked(out, images, false)
    }
    fn input_gradient(
        &self,
        images: &Tensor,
        objective: &Objective,
    ) -> Result<Gradient, PluginError> {
        stopping()?;
        objective_gradient(
            |x| self.checked(self.model.forward_t(x, false), x, true),
            images,
            objective,
        )
    }
    fn num_classes(&self) -> u32 {
        self.classes
    }
}

/// Answers objectives' calls with `model` in training mode (`forward_t(.., true)`:
/// batch-norm statistics update), under float16 autocast when `amp` is on (logits come
/// back as float32), with autograd to the parameters.
pub struct TrainingForward<'a> {
    /// The model being trained.
    pub model: &'a dyn ModuleT,
    /// Its number of classes.
    pub classes: u32,
    /// Mixed precision.
    pub amp: bool,
}

impl TrainingForward<'_> {
    fn run(&self, x: &Tensor) -> Tensor {
        // tch's autocast goes through libtorch's deprecated CUDA autocast calls, which
        // print a warning on every entry: enter it only for mixed precision.
        if self.amp {
            tch::autocast(true, || self.model.forward_t(x, true)).to_kind(Kind::Float)
        } else {
            self.model.forward_t(x, true)
        }
    }
}

impl OracleBackend for TrainingForward<'_> {
    fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        stopping()?;
        Ok(tch::with_grad(|| self.run(images)))
    }
    fn input_gradient(
        &self,
        images: &Tensor,
        objective: &Objective,
    ) -> Result<Gradient, PluginError> {
        stopping()?;
        differentiable_gradient(|x| Ok(self.run(x)), images, objective)
    }
    fn num_classes(&self) -> u32 {
        self.classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{Oracle, OracleAdapter};
    use tch::{nn, Device, Kind};

    #[test]
    fn input_gradients_leave_parameter_gradients_alone() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = sat_models::small_cnn(&vs.root(), 4, 3);
        let adapter = OracleAdapter(ModelOracle {
            model: &model,
            classes: 3,
        });
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 2]);
        let g = oracle
            .input_gradient(&x, Objective::cross_entropy(&y))
            .unwrap();
        assert_eq!(g.gradient.size(), x.size());
        assert!(g.gradient.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        for (name, p) in vs.variables() {
            assert!(!p.grad().defined(), "parameter {name} got a gradient");
        }
        // Batch-norm running statistics are untouched (eval mode).
        let snapshot = || -> std::collections::BTreeMap<String, Tensor> {
            vs.variables()
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect()
        };
        let before = snapshot();
        let _ = oracle.logits(&x).unwrap();
        let _ = oracle
            .input_gradient(&x, Objective::cross_entropy(&y))
            .unwrap();
        let after = snapshot();
        assert_eq!(before.len(), after.len());
        for (name, t) in &before {
            assert!(t.equal(&after[name]), "{name} changed");
        }
    }

    #[test]
    fn after_a_stop_request_every_model_call_is_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = sat_models::small_cnn(&vs.root(), 4, 3);
        let eval = OracleAdapter(ModelOracle {
            model: &model,
            classes: 3,
        });
        let training = OracleAdapter(TrainingForward {
            model: &model,
            classes: 3,
            amp: false,
        });
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 2]);
        for adapter in [eval.as_ref(), training.as_ref()] {
            let oracle = Oracle::new(&adapter);
            assert!(oracle.logits(&x).is_ok());
            let _stop = crate::interrupt::simulate_stop();
            let refused = oracle.logits(&x).unwrap_err();
            assert!(
                refused.message.contains("the host is stopping"),
                "{refused}"
            );
            assert!(oracle
                .input_gradient(&x, Objective::cross_entropy(&y))
                .is_err());
            assert_eq!(oracle.num_classes(), Ok(3), "no model call");
        }
    }
}
