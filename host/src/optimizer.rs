//! SGD (momentum, dampening-free, Nesterov, weight decay) and Adam with the update rules
//! of `torch.optim`, whose state (moment buffers, step count) can be saved and restored
//! so that a resumed run continues exactly where it stopped.
use crate::config::{OptimizerKind, TrainConfig};
use std::collections::HashMap;
use tch::{nn, Tensor};

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

/// An optimiser over the trainable variables of a var store.
pub struct Optimizer {
    rule: Rule,
    params: Vec<(String, Tensor)>,
    /// Per parameter: SGD momentum buffer, or Adam's first and second moments.
    buffers: HashMap<String, Vec<Tensor>>,
    steps: i64,
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
        Self {
            rule,
            params,
            buffers: HashMap::new(),
            steps: 0,
        }
    }

    /// Clears the parameters' gradients, back-propagates `loss` and takes one step at
    /// learning rate `lr`.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        self.step(lr);
    }

    /// [`Optimizer::backward_step`] with dynamic loss scaling; returns whether the step
    /// was taken (it is skipped, and the scale halved, when a gradient is not finite).
    pub fn scaled_backward_step(&mut self, loss: &Tensor, lr: f64, scaler: &mut LossScale) -> bool {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        (loss * scaler.scale).backward();
        let finite = tch::no_grad(|| {
            let mut all = Tensor::from(true).to_device(loss.device());
            for (_, p) in &self.params {
                let g = p.grad();
                if g.defined() {
                    all = all.logical_and(&g.isfinite().all());
                }
            }
            bool::try_from(all).unwrap_or(false)
        });
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
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(1.0 / scaler.scale);
                }
            }
        });
        self.step(lr);
        scaler.good_steps += 1;
        if scaler.good_steps >= LossScale::GROWTH_INTERVAL {
            scaler.scale *= 2.0;
            scaler.good_steps = 0;
        }
        true
    }

    /// One update at learning rate `lr` from the parameters' current gradients.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let t = self.steps;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match self.rule {
                    Rule::Sgd {
                        momentum,
                        nesterov,
                        weight_decay,
                    } => {
                        let mut d = if weight_decay != 0.0 {
                            &g + &p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        if momentum != 0.0 {
                            let buf = match self.buffers.get_mut(name) {
                                Some(b) => {
                                    let _ = b[0].g_mul_scalar_(momentum).g_add_(&d);
                                    b[0].shallow_clone()
                                }
                                None => {
                                    let b = d.detach().copy();
                                    self.buffers.insert(name.clone(), vec![b.shallow_clone()]);
                                    b
                                }
                            };
                            d = if nesterov { &d + &buf * momentum } else { buf };
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
                            &g + &p * weight_decay
                        } else {
                            g.shallow_clone()
                        };
                        let b = self
                            .buffers
                            .entry(name.clone())
                            .or_insert_with(|| vec![p.zeros_like(), p.zeros_like()]);
                        let _ = b[0].g_mul_scalar_(beta1).g_add_(&(&d * (1.0 - beta1)));
                        let _ = b[1].g_mul_scalar_(beta2).g_add_(&(&d * &d * (1.0 - beta2)));
                        let c1 = 1.0 - beta1.powi(t as i32);
                        let c2 = 1.0 - beta2.powi(t as i32);
                        let denom = b[1].sqrt() / c2.sqrt() + eps;
                        let _ = p.g_add_(&(&b[0] / denom * (-lr / c1)));
                    }
                }
            }
        });
    }

    /// The state as named tensors (`optimizer.<param>.<i>` and `optimizer.steps`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "optimizer.steps".to_string(),
            Tensor::from_slice(&[self.steps]),
        )];
        let mut names: Vec<&String> = self.buffers.keys().collect();
        names.sort();
        for name in names {
            for (i, b) in self.buffers[name].iter().enumerate() {
                out.push((format!("optimizer.{name}.{i}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restores a state written by [`Optimizer::state`].
    pub fn load_state(&mut self, named: &HashMap<String, Tensor>) -> Result<(), String> {
        let steps = named
            .get("optimizer.steps")
            .ok_or("the optimiser state has no step count")?;
        self.steps = steps.int64_value(&[0]);
        self.buffers.clear();
        for (name, p) in &self.params {
            let mut buffers = Vec::new();
            while let Some(b) = named.get(&format!("optimizer.{name}.{}", buffers.len())) {
                if b.size() != p.size() {
                    return Err(format!(
                        "optimiser buffer of {name} has shape {:?}, the parameter {:?}",
                        b.size(),
                        p.size()
                    ));
                }
                buffers.push(b.to_device(p.device()).to_kind(p.kind()));
            }
            if !buffers.is_empty() {
                self.buffers.insert(name.clone(), buffers);
            }
        }
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
