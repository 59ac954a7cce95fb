//! The models' BatchNorm layer: tch's `nn::BatchNorm` (same variables, names, shapes and
//! initialisation, so checkpoints are unchanged), whose batch statistics in training mode
//! may come from a reducer the caller supplies: synchronised BatchNorm, as
//! `torch.nn.SyncBatchNorm` computes it, when the reducer sums over the ranks of a
//! data-parallel run. This crate knows no process group; the host passes the reducer.
use std::fmt;
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// A differentiable sum of a tensor over the processes of a data-parallel run: forward
/// `Σ_ranks x_r`, backward the sum of the ranks' incoming gradients (identical on every
/// rank). Every rank must call it equally often, in the same order. A failure (a dead
/// peer, a timeout) panics, as tch's own failing operations do.
pub type StatsReducer = Arc<dyn Fn(&Tensor) -> Tensor + Send + Sync>;

/// Where BatchNorm layers take their batch statistics from in training mode.
#[derive(Clone, Default)]
pub struct BatchStats {
    reducer: Option<StatsReducer>,
}

impl fmt::Debug for BatchStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reducer {
            None => "BatchStats::Local",
            Some(_) => "BatchStats::Synchronised",
        })
    }
}

impl BatchStats {
    /// Statistics of the local batch (plain BatchNorm; the default).
    pub fn local() -> Self {
        Self::default()
    }

    /// Statistics of the batches of every rank, summed by `reducer` (synchronised
    /// BatchNorm). Evaluation mode still uses the running statistics only.
    pub fn synchronised(reducer: StatsReducer) -> Self {
        Self {
            reducer: Some(reducer),
        }
    }

    /// Whether batch statistics are reduced over the ranks.
    pub fn is_synchronised(&self) -> bool {
        self.reducer.is_some()
    }

    /// A 2-d BatchNorm of `channels` under `vs` (tch's defaults: ε = 1e-5, momentum 0.1).
    pub fn layer2d(&self, vs: nn::Path, channels: i64) -> BatchNorm {
        let config = nn::BatchNormConfig::default();
        BatchNorm {
            inner: nn::batch_norm2d(vs, channels, config),
            eps: config.eps,
            momentum: config.momentum,
            reducer: self.reducer.clone(),
        }
    }
}

/// tch's `nn::BatchNorm`, with batch statistics optionally reduced over ranks (see
/// [`BatchStats`]).
pub struct BatchNorm {
    inner: nn::BatchNorm,
    eps: f64,
    momentum: f64,
    reducer: Option<StatsReducer>,
}

impl fmt::Debug for BatchNorm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchNorm")
            .field("inner", &self.inner)
            .field("synchronised", &self.reducer.is_some())
            .finish()
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match &self.reducer {
            Some(reduce) if train => self.synchronised(x, reduce.as_ref()),
            _ => self.inner.forward_t(x, train),
        }
    }
}

impl BatchNorm {
    /// Training-mode BatchNorm with the statistics of the global batch: per channel, the
    /// local `Σx`, `Σx²` (in float64) and count are reduced in one call; the global mean
    /// and biased variance normalise `x`; the running statistics take the global mean and
    /// the unbiased global variance (momentum as torch's), the same on every rank.
    fn synchronised(
        &self,
        x: &Tensor,
        reduce: &(dyn Fn(&Tensor) -> Tensor + Send + Sync),
    ) -> Tensor {
        let kind = x.kind();
        let xf = match kind {
            Kind::Float | Kind::Double => x.shallow_clone(),
            _ => x.to_kind(Kind::Float),
        };
        let shape = x.size();
        let channels = *shape
            .get(1)
            .unwrap_or_else(|| panic!("BatchNorm expects [N, C, …] input, got shape {shape:?}"));
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let local_count = (x.numel() as i64 / channels.max(1)) as f64;
        let device = x.device();
        let sum = xf.sum_dim_intlist(dims.as_slice(), false, Kind::Double);
        let squares = xf
            .square()
            .sum_dim_intlist(dims.as_slice(), false, Kind::Double);
        let count = Tensor::full([1], local_count, (Kind::Double, device));
        let global = reduce(&Tensor::cat(&[sum, squares, count], 0));
        let n = global.narrow(0, 2 * channels, 1);
        if local_count <= 1.0 && n.double_value(&[0]) <= 1.0 {
            panic!("Expected more than 1 value per channel when training, got input size {shape:?} on every rank");
        }
        let mean = global.narrow(0, 0, channels) / &n;
        let var = (global.narrow(0, channels, channels) / &n - mean.square()).clamp_min(0.0);
        self.update_running_stats(&mean, &(&var * &n / (&n - 1.0)));

        let mut view = vec![1i64; x.dim()];
        view[1] = channels;
        let invstd = (var + self.eps).rsqrt();
        let to_view = |t: Tensor| t.to_kind(xf.kind()).view(view.as_slice());
        let mut y = (&xf - to_view(mean)) * to_view(invstd);
        if let (Some(w), Some(b)) = (&self.inner.ws, &self.inner.bs) {
            y = y * w.view(view.as_slice()) + b.view(view.as_slice());
        }
        if y.kind() == kind {
            y
        } else {
            y.to_kind(kind)
        }
    }

    /// `running ← (1 − momentum) · running + momentum · batch`, outside autograd.
    fn update_running_stats(&self, mean: &Tensor, unbiased_var: &Tensor) {
        tch::no_grad(|| {
            for (running, batch) in [
                (&self.inner.running_mean, mean),
                (&self.inner.running_var, unbiased_var),
            ] {
                let mut running = running.shallow_clone();
                let batch = batch.detach().to_kind(running.kind());
                let _ = running.lerp_(&batch, self.momentum);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tch::{Device, Kind};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Twin layers: tch's BatchNorm and the wrapper with `stats`, with equal variables.
    fn twins(
        stats: &BatchStats,
        channels: i64,
        kind: Kind,
    ) -> (nn::VarStore, nn::BatchNorm, nn::VarStore, BatchNorm) {
        let mut vs_a = nn::VarStore::new(Device::Cpu);
        let a = nn::batch_norm2d(vs_a.root() / "bn", channels, Default::default());
        let mut vs_b = nn::VarStore::new(Device::Cpu);
        let b = stats.layer2d(vs_b.root() / "bn", channels);
        vs_a.set_kind(kind);
        vs_b.set_kind(kind);
        vs_b.copy(&vs_a).unwrap();
        (vs_a, a, vs_b, b)
    }

    #[test]
    fn variables_are_tchs() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = BatchStats::local().layer2d(vs.root() / "b1", 5);
        let mut names: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.size()))
            .collect();
        names.sort();
        let expected = ["b1.bias", "b1.running_mean", "b1.running_var", "b1.weight"];
        assert_eq!(names, expected.map(|k| (k.to_string(), vec![5])).to_vec());
        assert_eq!(vs.trainable_variables().len(), 2);
    }

    /// With the identity as reducer (one process), synchronised BatchNorm is tch's:
    /// outputs, gradients of the input and of the affine parameters, running statistics
    /// (within 1e-6 of the largest magnitude compared in float32, 1e-12 in float64).
    #[test]
    fn the_identity_reducer_gives_tchs_batchnorm() {
        for kind in [Kind::Double, Kind::Float] {
            identity_reducer_gives_tchs_batchnorm(kind);
        }
    }

    fn identity_reducer_gives_tchs_batchnorm(kind: Kind) {
        tch::manual_seed(3);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let identity: StatsReducer = Arc::new(move |t: &Tensor| {
            counter.fetch_add(1, Ordering::SeqCst);
            t.shallow_clone()
        });
        let (vs_a, a, vs_b, b) = twins(&BatchStats::synchronised(identity), 6, kind);
        let check = |what: &str, x: &Tensor, y: &Tensor| {
            let scale = x.abs().max().double_value(&[]).max(1.0);
            let d = max_diff(x, y);
            let tolerance = if kind == Kind::Double { 1e-12 } else { 1e-6 };
            assert!(
                d <= tolerance * scale,
                "{kind:?}: {what} differs by {d} (scale {scale})"
            );
        };
        for step in 0..3 {
            let x = (Tensor::randn([8, 6, 5, 4], (kind, Device::Cpu)) * 3.0 + 1.5)
                .set_requires_grad(true);
            let xb = x.detach().set_requires_grad(true);
            let probe = Tensor::randn([8, 6, 5, 4], (kind, Device::Cpu));
            let ya = a.forward_t(&x, true);
            let yb = b.forward_t(&xb, true);
            check(&format!("step {step}: output"), &ya, &yb);
            (ya * &probe).sum(kind).backward();
            (yb * &probe).sum(kind).backward();
            check(
                &format!("step {step}: input gradient"),
                &x.grad(),
                &xb.grad(),
            );
            for name in ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"] {
                let (va, vb) = (&vs_a.variables()[name], &vs_b.variables()[name]);
                if name.contains("running") {
                    check(&format!("step {step}: {name}"), va, vb);
                } else {
                    check(
                        &format!("step {step}: {name}'s gradient"),
                        &va.grad(),
                        &vb.grad(),
                    );
                }
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Evaluation mode uses the running statistics and never calls the reducer.
        let x = Tensor::randn([2, 6, 3, 3], (kind, Device::Cpu));
        check(
            "evaluation",
            &a.forward_t(&x, false),
            &b.forward_t(&x, false),
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// A reducer that doubles (two ranks holding the same batch) gives the same batch
    /// statistics, hence tch's output, but its running variance uses the count 2N.
    #[test]
    fn statistics_are_those_of_the_reduced_batch() {
        tch::manual_seed(4);
        let double: StatsReducer = Arc::new(|t: &Tensor| t * 2.0);
        let (_vs_a, a, _vs_b, b) = twins(&BatchStats::synchronised(double), 3, Kind::Float);
        let x = Tensor::randn([2, 3, 2, 2], (Kind::Float, Device::Cpu));
        let (ya, yb) = (a.forward_t(&x, true), b.forward_t(&x, true));
        assert!(max_diff(&ya, &yb) < 1e-6);
        // Per channel n = 8 local values, 16 global: unbiased variances differ by 15/14 · 7/8.
        let biased = x.var_dim(&[0i64, 2, 3][..], false, false);
        let expected = 0.9 + 0.1 * &biased * (16.0 / 15.0);
        assert!(max_diff(&b.inner.running_var, &expected) < 1e-6);
        // One value per channel locally is enough when the global batch has more.
        let one = Tensor::randn([1, 3, 1, 1], (Kind::Float, Device::Cpu));
        let _ = b.forward_t(&one, true);
    }

    /// Every architecture built with a reducer has the variables (names, shapes) of the
    /// plain build, so checkpoints are interchangeable; with the identity it trains as
    /// the plain model does.
    #[test]
    fn models_with_a_reducer_keep_their_variables() {
        let identity: StatsReducer = Arc::new(|t: &Tensor| t.shallow_clone());
        let synchronised = BatchStats::synchronised(identity);
        for arch in crate::ARCHITECTURES {
            let vs_a = nn::VarStore::new(Device::Cpu);
            let a = crate::build(&vs_a.root(), arch, 4, 3).unwrap();
            let mut vs_b = nn::VarStore::new(Device::Cpu);
            let b = crate::build_with(&vs_b.root(), arch, 4, 3, &synchronised).unwrap();
            let (va, vb) = (vs_a.variables(), vs_b.variables());
            assert_eq!(va.len(), vb.len(), "{arch}");
            for (name, t) in &va {
                assert_eq!(t.size(), vb[name].size(), "{arch}: {name}");
            }
            // (Equal initial values for one seed: host/tests/sync_batchnorm_ranks.rs, in a
            // process of its own; here other tests share libtorch's generator.)
            vs_b.copy(&vs_a).unwrap();
            let vb = vs_b.variables();
            if arch.starts_with("wrn") || arch == "resnet50" {
                continue; // large; the smaller ones cover the layers
            }
            let x = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu));
            let (ya, yb) = (a.forward_t(&x, true), b.forward_t(&x, true));
            assert!(max_diff(&ya, &yb) < 1e-5, "{arch}: {}", max_diff(&ya, &yb));
            // Running statistics: the synchronised path sums squares where tch's kernel
            // uses Welford, so agreement is relative to the variable's size (float32).
            for (name, t) in &va {
                let (diff, scale) = (max_diff(t, &vb[name]), t.abs().max().double_value(&[]));
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{arch}: {name} after a step differs by {diff:e} (largest value {scale})"
                );
            }
        }
    }
}
