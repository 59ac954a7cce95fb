//! SGD (momentum, dampening-free, Nesterov, weight decay) and Adam with the update rules
//! of `torch.optim`, whose state (moment buffers, step count) can be saved and restored
//! so that a resumed run continues exactly where it stopped.
use crate::config::{OptimizerKind, TrainConfig};
use std::collections::HashMap;
use tch::{nn, Kind, Tensor};

/// Hyper-parameters of the update (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// `torch.optim.SGD`.
    Sgd {
        /// Momentum (0 = plain SGD).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.Adam` (L2 weight decay added to the gradient).
    Adam {
        /// β₁.
        beta1: f64,
        /// β₂.
        beta2: f64,
        /// ε.
        eps: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

impl Rule {
    /// The state buffers the rule keeps per parameter once it has stepped.
    pub fn buffers(&self) -> usize {
        match self {
            Rule::Sgd { momentum, .. } if *momentum == 0.0 => 0,
            Rule::Sgd { .. } => 1,
            Rule::Adam { .. } => 2,
        }
    }

    /// The rule `[train]` asks for.
    pub fn from_config(t: &TrainConfig) -> Self {
        match t.optimizer {
            OptimizerKind::Sgd => Rule::Sgd {
                momentum: t.momentum,
                nesterov: t.nesterov,
                weight_decay: t.weight_decay,
            },
            OptimizerKind::Adam => Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: t.weight_decay,
            },
        }
    }
}

/// Dynamic loss scaling for mixed-precision training (`torch.cuda.amp.GradScaler`'s
/// rule): the loss is multiplied by `scale` before the backward pass and the gradients
/// divided by it before the update; a step whose gradients are not finite is skipped
/// and halves the scale; 2000 finite steps in a row double it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScale {
    /// The current factor.
    pub scale: f64,
    /// Finite steps since the last change.
    pub good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScale {
    const GROWTH_INTERVAL: u32 = 2000;
}

/// The most optimiser steps a state file may record (2^53: exact in a float64).
pub const MAX_STEPS: i64 = 1 << 53;

/// An optimiser over the trainable variables of a var store.
///
/// The parameters and their gradients are rebound to views of one flat tensor each, so
/// an update is a few operations on the flat tensors instead of a few per parameter (on
/// CUDA each operation is a kernel launch, and a ResNet has some 60 parameter tensors).
/// Saved state stays per parameter. A parameter that gets no gradient in a step is
/// updated with a zero gradient (`torch.optim` skips it); the models here use every
/// parameter in every forward pass.
pub struct Optimizer {
    rule: Rule,
    /// Trainable variables by name, sorted; views of `flat.params`.
    params: Vec<(String, Tensor)>,
    flat: Flat,
    /// SGD's momentum buffer, or Adam's first and second moments, flat like the
    /// parameters; empty before the first step.
    buffers: Vec<Tensor>,
    steps: i64,
}

/// Parameters and gradients as views of one tensor each.
struct Flat {
    params: Tensor,
    grads: Tensor,
    /// Offset and length of each parameter in the flat tensors.
    spans: Vec<(i64, i64)>,
    /// The address each parameter's gradient has while it is a view of `grads`.
    grad_ptrs: Vec<usize>,
}

impl Flat {
    /// Copies `params` and their gradients into flat tensors and rebinds both to views
    /// of them. Parameters without a gradient tensor get a zero one first.
    fn bind(params: &[(String, Tensor)]) -> Flat {
        if params.iter().any(|(_, p)| !p.grad().defined()) {
            let zero = tch::with_grad(|| {
                params
                    .iter()
                    .map(|(_, p)| p.sum(p.kind()) * 0.0)
                    .reduce(|a, b| a + b)
            });
            if let Some(zero) = zero {
                zero.backward();
            }
        }
        tch::no_grad(|| {
            let cat = |parts: Vec<Tensor>| {
                if parts.is_empty() {
                    Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
                } else {
                    Tensor::cat(&parts, 0)
                }
            };
            let flat_params = cat(params
                .iter()
                .map(|(_, p)| p.detach().reshape([-1]))
                .collect());
            let flat_grads = cat(params.iter().map(|(_, p)| p.grad().reshape([-1])).collect());
            let mut spans = Vec::with_capacity(params.len());
            let mut grad_ptrs = Vec::with_capacity(params.len());
            let mut offset = 0;
            for (_, p) in params {
                let n = p.numel() as i64;
                let size = p.size();
                let _ = p
                    .shallow_clone()
                    .set_source_tensor_(&flat_params.narrow(0, offset, n).view(size.as_slice()));
                let mut g = p.grad();
                let _ =
                    g.set_source_tensor_(&flat_grads.narrow(0, offset, n).view(size.as_slice()));
                grad_ptrs.push(g.data_ptr() as usize);
                spans.push((offset, n));
                offset += n;
            }
            Flat {
                params: flat_params,
                grads: flat_grads,
                spans,
                grad_ptrs,
            }
        })
    }

    /// Whether every gradient is still the view `bind` made (autograd replaces a
    /// gradient only in cases this trainer does not use, e.g. `create_graph`).
    fn intact(&self, params: &[(String, Tensor)]) -> bool {
        params
            .iter()
            .zip(&self.grad_ptrs)
            .all(|((_, p), &ptr)| p.grad().data_ptr() as usize == ptr)
    }
}

impl Optimizer {
    /// An optimiser for the trainable variables of `vs`.
    pub fn new(vs: &nn::VarStore, rule: Rule) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let flat = Flat::bind(&params);
        Self {
            rule,
            params,
            flat,
            buffers: Vec::new(),
            steps: 0,
        }
    }

    /// Zeroes the gradients (one operation on the flat gradient).
    fn zero_grad(&mut self) {
        if !self.flat.intact(&self.params) {
            log::debug!(
                "parameter gradients were replaced; binding them to the flat gradient again"
            );
            self.flat = Flat::bind(&self.params);
        }
        let _ = self.flat.grads.zero_();
    }

    /// Clears the gradients and back-propagates `loss`, multiplied by the loss scale of
    /// `scaler` when there is one (mixed precision). Afterwards
    /// [`Optimizer::flat_gradient`] holds this process's gradients (scaled with a
    /// scaler); [`Optimizer::apply`] then takes the step.
    pub fn backward(&mut self, loss: &Tensor, scaler: Option<&LossScale>) {
        self.zero_grad();
        match scaler {
            Some(scaler) => (loss * scaler.scale).backward(),
            None => loss.backward(),
        }
    }

    /// The gradients of all trainable parameters as one flat tensor (each parameter's
    /// gradient is a view of it, in the order of the sorted parameter names): what a
    /// data-parallel driver reduces in place between [`Optimizer::backward`] and
    /// [`Optimizer::apply`].
    pub fn flat_gradient(&self) -> &Tensor {
        &self.flat.grads
    }

    /// The trainable parameters by name, in the order of [`Optimizer::flat_gradient`]
    /// (each one's gradient is the view of it at the sum of the sizes before it): what a
    /// data-parallel driver registers its gradient hooks on.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// One update at learning rate `lr` from the current gradients. With `scaler` (mixed
    /// precision) the gradients are those of the scaled loss: a step whose gradients are
    /// not all finite is skipped and halves the scale; otherwise they are divided by the
    /// scale before the update, and 2000 such steps in a row double it. Returns whether
    /// the step was taken.
    pub fn apply(&mut self, lr: f64, scaler: Option<&mut LossScale>) -> bool {
        let Some(scaler) = scaler else {
            self.step(lr);
            return true;
        };
        let finite =
            tch::no_grad(|| bool::try_from(self.flat.grads.isfinite().all())).unwrap_or(false);
        if !finite {
            scaler.scale /= 2.0;
            scaler.good_steps = 0;
            log::debug!(
                "non-finite scaled gradients: step skipped, loss scale now {}",
                scaler.scale
            );
            return false;
        }
        tch::no_grad(|| {
            let _ = self.flat.grads.g_mul_scalar_(1.0 / scaler.scale);
        });
        self.step(lr);
        scaler.good_steps += 1;
        if scaler.good_steps >= LossScale::GROWTH_INTERVAL {
            scaler.scale *= 2.0;
            scaler.good_steps = 0;
        }
        true
    }

    /// [`Optimizer::backward`] and [`Optimizer::apply`] without loss scaling.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) {
        self.backward(loss, None);
        self.apply(lr, None);
    }

    /// [`Optimizer::backward`] and [`Optimizer::apply`] with dynamic loss scaling;
    /// returns whether the step was taken.
    pub fn scaled_backward_step(&mut self, loss: &Tensor, lr: f64, scaler: &mut LossScale) -> bool {
        self.backward(loss, Some(scaler));
        self.apply(lr, Some(scaler))
    }

    /// One update at learning rate `lr` from the parameters' current (unscaled) gradients.
    fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps;
        let p = &mut self.flat.params;
        let g = &self.flat.grads;
        let buffers = &mut self.buffers;
        tch::no_grad(|| match self.rule {
            Rule::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let mut d = if weight_decay != 0.0 {
                    g + &*p * weight_decay
                } else {
                    g.shallow_clone()
                };
                if momentum != 0.0 {
                    if buffers.is_empty() {
                        buffers.push(d.detach().copy());
                    } else {
                        let _ = buffers[0].g_mul_scalar_(momentum).g_add_(&d);
                    }
                    d = if nesterov {
                        &d + &buffers[0] * momentum
                    } else {
                        buffers[0].shallow_clone()
                    };
                }
                let _ = p.g_add_(&(d * (-lr)));
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let d = if weight_decay != 0.0 {
                    g + &*p * weight_decay
                } else {
                    g.shallow_clone()
                };
                if buffers.is_empty() {
                    *buffers = vec![p.zeros_like(), p.zeros_like()];
                }
                // torch.optim.Adam's rule: m ← lerp(m, d, 1−β1); v ← lerp(v, d², 1−β2);
                // p ← p − lr/c1 · m / (√v/√c2 + ε), the step size folded into the
                // denominator so that one addcdiv_ applies it.
                let _ = buffers[0].lerp_(&d, 1.0 - beta1);
                let _ = buffers[1].lerp_(&(&d * &d), 1.0 - beta2);
                let c1 = 1.0 - beta1.powi(t as i32);
                let c2 = 1.0 - beta2.powi(t as i32);
                if lr != 0.0 {
                    let mut denom = buffers[1].sqrt();
                    let _ = denom
                        .g_mul_scalar_(1.0 / c2.sqrt())
                        .g_add_scalar_(eps)
                        .g_mul_scalar_(-c1 / lr);
                    let _ = p.addcdiv_(&buffers[0], &denom);
                }
            }
        });
    }

    /// The number of flat state buffers: 0 before the first update, then 1 (SGD with
    /// momentum) or 2 (Adam).
    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// Makes `count` zeroed state buffers when there are none, so that [`Self::state`]
    /// has the tensors another process's state can be copied into (a data-parallel rank
    /// receiving rank 0's state).
    pub fn ensure_buffers(&mut self, count: usize) {
        if self.buffers.is_empty() {
            self.buffers = (0..count).map(|_| self.flat.params.zeros_like()).collect();
        }
    }

    /// The state as named tensors (`optimizer.<param>.<i>` and `optimizer.steps`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "optimizer.steps".to_string(),
            Tensor::from_slice(&[self.steps]),
        )];
        for ((name, p), &(offset, n)) in self.params.iter().zip(&self.flat.spans) {
            for (i, b) in self.buffers.iter().enumerate() {
                out.push((
                    format!("optimizer.{name}.{i}"),
                    b.narrow(0, offset, n).view(p.size().as_slice()),
                ));
            }
        }
        out
    }

    /// Restores a state written by [`Optimizer::state`]: the step count in
    /// [0, [`MAX_STEPS`]], each buffer of the parameter's shape and dtype, finite; any
    /// other `optimizer.` key is an error naming it.
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>) -> Result<(), String> {
        self.steps = super::checkpoint::stored_integer(named, "optimizer.steps", 0..=MAX_STEPS)?;
        let count = match self.params.first() {
            Some((name, _)) => (0..)
                .take_while(|i| named.contains_key(&format!("optimizer.{name}.{i}")))
                .count(),
            None => 0,
        };
        if count != 0 && count != self.rule.buffers() {
            return Err(format!(
                "the optimiser state has {count} buffers a parameter; [train] optimizer keeps {}",
                self.rule.buffers()
            ));
        }
        let known = |k: &str| {
            k == "optimizer.steps"
                || k.rsplit_once('.').is_some_and(|(name, i)| {
                    i.parse::<usize>().is_ok_and(|i| i < count)
                        && name
                            .strip_prefix("optimizer.")
                            .is_some_and(|n| self.params.iter().any(|(p, _)| p == n))
                })
        };
        let mut keys: Vec<&String> = named
            .keys()
            .filter(|k| k.starts_with("optimizer."))
            .collect();
        keys.sort();
        if let Some(stray) = keys.into_iter().find(|k| !known(k)) {
            return Err(format!(
                "`{stray}` is not optimiser state of this model and [train] optimizer"
            ));
        }
        let mut buffers: Vec<Tensor> = (0..count).map(|_| self.flat.params.zeros_like()).collect();
        for ((name, p), &(offset, n)) in self.params.iter().zip(&self.flat.spans) {
            for (i, flat) in buffers.iter_mut().enumerate() {
                let key = format!("optimizer.{name}.{i}");
                let b = named
                    .get(&key)
                    .ok_or_else(|| format!("the optimiser state has no {key}"))?;
                if b.kind() != p.kind() || !sat_models::finite(b) {
                    return Err(format!(
                        "`{key}` is not finite {:?} values for the parameter",
                        p.kind()
                    ));
                }
                if b.size() != p.size() {
                    return Err(format!(
                        "optimiser buffer of {name} has shape {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    ));
                }
                tch::no_grad(|| {
                    flat.narrow(0, offset, n).copy_(
                        &b.reshape([-1])
                            .to_device(flat.device())
                            .to_kind(flat.kind()),
                    )
                });
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{Module, OptimizerConfig};
    use tch::{Device, Kind};

    /// Trains two copies of a small linear model, one with `ours`, one with libtorch's
    /// own optimiser `theirs`, and returns the largest parameter difference.
    fn compare(rule: Rule, theirs: impl OptimizerConfig, lr: f64) -> f64 {
        let make = || {
            tch::manual_seed(3);
            let vs = nn::VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 5, 3, Default::default());
            (vs, lin)
        };
        let (vs_a, lin_a) = make();
        let (mut vs_b, lin_b) = make();
        // Tests share the global RNG: make the copies identical explicitly.
        vs_b.copy(&vs_a).unwrap();
        let mut ours = Optimizer::new(&vs_a, rule);
        let mut reference = theirs.build(&vs_b, lr).unwrap();
        tch::manual_seed(4);
        for _ in 0..7 {
            let x = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
            let y = Tensor::randint(3, [8], (Kind::Int64, Device::Cpu));
            ours.backward_step(&lin_a.forward(&x).cross_entropy_for_logits(&y), lr);
            reference.backward_step(&lin_b.forward(&x).cross_entropy_for_logits(&y));
        }
        let a = vs_a.variables();
        let b = vs_b.variables();
        a.iter()
            .map(|(k, t)| (t - &b[k]).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    /// Parameters and gradients are views of the flat tensors, in order, and stay so
    /// across steps; the var store sees the updates.
    #[test]
    fn parameters_and_gradients_are_views_of_the_flat_tensors() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = nn::linear(vs.root() / "a", 5, 4, Default::default());
        let b = nn::linear(vs.root() / "b", 4, 3, Default::default());
        let mut opt = Optimizer::new(&vs, Rule::from_config(&Default::default()));
        let before = vs.variables()["b.weight"].copy();
        for _ in 0..3 {
            let x = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
            let y = Tensor::randint(3, [8], (Kind::Int64, Device::Cpu));
            opt.backward_step(
                &b.forward(&a.forward(&x).relu())
                    .cross_entropy_for_logits(&y),
                0.1,
            );
            assert!(opt.flat.intact(&opt.params));
            for ((_, p), &(offset, _)) in opt.params.iter().zip(&opt.flat.spans) {
                let at = |flat: &Tensor| flat.data_ptr() as usize + 4 * offset as usize;
                assert_eq!(p.data_ptr() as usize, at(&opt.flat.params));
                assert_eq!(p.grad().data_ptr() as usize, at(&opt.flat.grads));
            }
        }
        let after = &vs.variables()["b.weight"];
        assert!((after - before).abs().max().double_value(&[]) > 0.0);
        // The flat gradient is the concatenation of the parameters' gradients.
        let joined = Tensor::cat(
            &opt.params
                .iter()
                .map(|(_, p)| p.grad().reshape([-1]))
                .collect::<Vec<_>>(),
            0,
        );
        assert!(joined.equal(&opt.flat.grads));
    }

    #[test]
    fn sgd_and_adam_match_libtorch() {
        let sgd = compare(
            Rule::Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
            },
            nn::Sgd {
                momentum: 0.9,
                nesterov: true,
                wd: 5e-4,
                dampening: 0.0,
            },
            0.1,
        );
        assert!(sgd < 1e-6, "SGD differs by {sgd}");
        let plain = compare(
            Rule::Sgd {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.0,
            },
            nn::Sgd {
                momentum: 0.9,
                ..Default::default()
            },
            0.05,
        );
        assert!(plain < 1e-6, "SGD differs by {plain}");
        let adam = compare(
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-3,
            },
            nn::Adam {
                wd: 1e-3,
                ..Default::default()
            },
            0.01,
        );
        assert!(adam < 1e-6, "Adam differs by {adam}");
    }

    #[test]
    fn loss_scaling_takes_the_unscaled_step_and_skips_overflows() {
        let make = || {
            tch::manual_seed(5);
            let vs = nn::VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 4, 3, Default::default());
            (vs, lin)
        };
        let rule = Rule::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 1, 0]);
        let (vs_a, lin_a) = make();
        let (mut vs_b, lin_b) = make();
        vs_b.copy(&vs_a).unwrap();
        let mut plain = Optimizer::new(&vs_a, rule);
        let mut scaled = Optimizer::new(&vs_b, rule);
        let mut scaler = LossScale::default();
        for _ in 0..3 {
            plain.backward_step(&lin_a.forward(&x).cross_entropy_for_logits(&y), 0.1);
            assert!(scaled.scaled_backward_step(
                &lin_b.forward(&x).cross_entropy_for_logits(&y),
                0.1,
                &mut scaler
            ));
        }
        let diff = (&lin_a.ws - &lin_b.ws).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        assert_eq!(scaler.good_steps, 3);
        // A scale that overflows float32 gradients: no step, the scale halves.
        let before = lin_b.ws.copy();
        let mut huge = LossScale {
            scale: 1e39,
            good_steps: 7,
        };
        assert!(!scaled.scaled_backward_step(
            &lin_b.forward(&x).cross_entropy_for_logits(&y),
            0.1,
            &mut huge
        ));
        assert!(lin_b.ws.equal(&before));
        assert_eq!(
            huge,
            LossScale {
                scale: 5e38,
                good_steps: 0
            }
        );
    }

    #[test]
    fn restored_state_continues_identically() {
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let run = |split: Option<usize>, restore: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            let lin = nn::linear(vs.root() / "l", 4, 2, Default::default());
            // Fixed values, independent of the RNG other tests share.
            let opts = (Kind::Float, Device::Cpu);
            tch::no_grad(|| {
                lin.ws
                    .shallow_clone()
                    .copy_(&Tensor::linspace(-0.5, 0.5, 8, opts).reshape([2, 4]));
                lin.bs
                    .as_ref()
                    .unwrap()
                    .shallow_clone()
                    .copy_(&Tensor::zeros([2], opts));
            });
            let mut opt = Optimizer::new(&vs, rule);
            let x = Tensor::linspace(-2.0, 3.0, 24, opts).reshape([6, 4]).sin();
            let y = Tensor::from_slice(&[0i64, 1, 0, 1, 1, 0]);
            for i in 0..6 {
                if Some(i) == split {
                    let saved: HashMap<String, Tensor> = opt
                        .state()
                        .into_iter()
                        .map(|(k, t)| (k, t.copy()))
                        .collect();
                    opt = Optimizer::new(&vs, rule);
                    if restore {
                        opt.load_state(&saved).unwrap();
                    }
                }
                opt.backward_step(&lin.forward(&x).cross_entropy_for_logits(&y), 0.05);
            }
            lin.ws.copy()
        };
        assert!(run(None, false).equal(&run(Some(3), true)));
        // Without its state, Adam restarts its moments and ends elsewhere.
        assert!(!run(None, false).equal(&run(Some(3), false)));
    }
}
