//! Input gradients with a chosen rule at the ReLUs: the vanilla gradient, or guided
//! backpropagation (Springenberg et al. 2015), which also zeroes negative gradients
//! flowing back through each ReLU. Works on any model of this crate, residual
//! connections included: the forward pass is cut at every ReLU ([`crate::activation`])
//! and the pieces are walked back in reverse order, each with autograd.
use crate::activation::{self, Cut};
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// What a ReLU does to the gradient flowing back through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReluRule {
    /// `g · [x > 0]`: the true gradient.
    Vanilla,
    /// `max(g, 0) · [x > 0]`: guided backpropagation.
    Guided,
}

/// The gradient of `Σᵢ logits[i, target[i]]` with respect to `images` under `rule`
/// (eval mode), and the recorded ReLU cuts of the forward pass (activations for
/// Grad-CAM-style methods), and the logits.
pub fn input_gradient(
    model: &dyn ModuleT,
    images: &Tensor,
    target: &Tensor,
    rule: ReluRule,
) -> (Tensor, Vec<Cut>, Tensor) {
    let (mut acc, cuts, logits) = walk(model, images, target, rule, 0);
    let grad = acc[0].take().unwrap_or_else(|| images.zeros_like());
    (grad, cuts, logits)
}

/// The activation of ReLU `cut` (in forward order) and the true gradient of
/// `Σᵢ logits[i, target[i]]` with respect to it, and the logits.
pub fn activation_gradient(
    model: &dyn ModuleT,
    images: &Tensor,
    target: &Tensor,
    cut: usize,
) -> Option<(Tensor, Tensor, Tensor)> {
    let (mut acc, cuts, logits) = walk(model, images, target, ReluRule::Vanilla, cut + 1);
    let activation = cuts.get(cut)?.post.detach();
    let grad = acc
        .get_mut(cut + 1)?
        .take()
        .unwrap_or_else(|| activation.zeros_like());
    Some((activation, grad, logits))
}

/// The ReLU cuts of a forward pass of `model` on `images`: their activations' shapes
/// tell which layers are spatial.
pub fn activation_shapes(model: &dyn ModuleT, images: &Tensor) -> Vec<Vec<i64>> {
    let (_, cuts) = activation::record(|| tch::no_grad(|| model.forward_t(images, false)));
    cuts.iter().map(|c| c.post.size()).collect()
}

/// Records a forward pass and walks back through the ReLU cuts down to leaf `stop`
/// (0 = the input, `k + 1` = the output of cut `k`), so that the accumulated gradient
/// of every leaf `>= stop` is complete.
fn walk(
    model: &dyn ModuleT,
    images: &Tensor,
    target: &Tensor,
    rule: ReluRule,
    stop: usize,
) -> (Vec<Option<Tensor>>, Vec<Cut>, Tensor) {
    let x = images.detach().set_requires_grad(true);
    let (logits, cuts) = activation::record(|| model.forward_t(&x, false));
    let score = logits
        .gather(1, &target.unsqueeze(1), false)
        .sum(Kind::Float);
    // Leaves: the input, then every ReLU output.
    let leaves: Vec<&Tensor> = std::iter::once(&x)
        .chain(cuts.iter().map(|c| &c.post))
        .collect();
    let mut acc: Vec<Option<Tensor>> = (0..leaves.len()).map(|_| None).collect();
    accumulate(&score, &leaves, &mut acc);
    for k in (stop..cuts.len()).rev() {
        let Some(g) = acc[k + 1].take() else { continue };
        let cut = &cuts[k];
        let open = cut.pre.gt(0.0).to_kind(g.kind());
        let g_pre = match rule {
            ReluRule::Vanilla => &g * open,
            ReluRule::Guided => g.relu() * open,
        };
        acc[k + 1] = Some(g);
        // The vector-Jacobian product of the piece before this ReLU.
        let piece = (&cut.pre * g_pre.detach()).sum(Kind::Float);
        accumulate(&piece, &leaves[..=k], &mut acc);
    }
    (acc, cuts, logits.detach())
}

/// Adds the gradients of the scalar `output` with respect to `leaves` into `acc`.
fn accumulate(output: &Tensor, leaves: &[&Tensor], acc: &mut [Option<Tensor>]) {
    if !output.requires_grad() {
        return;
    }
    let inputs: Vec<Tensor> = leaves.iter().map(|t| t.shallow_clone()).collect();
    let grads = Tensor::run_backward(&[output], &inputs, true, false);
    for (slot, g) in acc.iter_mut().zip(grads) {
        if !g.defined() {
            continue;
        }
        *slot = Some(match slot.take() {
            Some(a) => a + g,
            None => g,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    fn target(n: i64) -> Tensor {
        Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3)
    }

    #[test]
    fn the_vanilla_rule_is_the_true_gradient_on_every_architecture() {
        for arch in ["small-cnn", "resnet10", "preact-resnet18"] {
            tch::manual_seed(0);
            let vs = nn::VarStore::new(Device::Cpu);
            let model = crate::build(&vs.root(), arch, 4, 3).unwrap();
            let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
            let (ours, cuts, _) = input_gradient(model.as_ref(), &x, &target(2), ReluRule::Vanilla);
            assert!(!cuts.is_empty());
            let xr = x.detach().set_requires_grad(true);
            let score = model
                .forward_t(&xr, false)
                .gather(1, &target(2).unsqueeze(1), false)
                .sum(Kind::Float);
            let reference = Tensor::run_backward(&[score], &[&xr], false, false).remove(0);
            let diff = (&ours - &reference).abs().max().double_value(&[]);
            let scale = reference.abs().max().double_value(&[]);
            assert!(diff <= 1e-5 * scale.max(1e-12), "{arch}: {diff} vs {scale}");
        }
    }

    #[test]
    fn activation_gradients_are_the_true_gradients_at_that_layer() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = crate::build(&vs.root(), "resnet10", 4, 3).unwrap();
        let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let shapes = activation_shapes(model.as_ref(), &x);
        let last = shapes.iter().rposition(|s| s.len() == 4).unwrap();
        let (a, g, _) = activation_gradient(model.as_ref(), &x, &target(2), last).unwrap();
        assert_eq!(a.size(), shapes[last]);
        assert_eq!(g.size(), a.size());
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // The last spatial ReLU feeds only global pooling and the head: its gradient is
        // the head's weight over h·w, the same at every position of a channel.
        let spread = (&g - g.mean_dim(&[2i64, 3][..], true, Kind::Float))
            .abs()
            .max();
        assert!(spread.double_value(&[]) < 1e-6);
    }

    #[test]
    fn guided_differs_from_vanilla_exactly_at_negative_relu_gradients() {
        // x → W1 x → ReLU → w2 · h. Vanilla: W1ᵀ (w2 ⊙ [W1x > 0]);
        // guided: W1ᵀ (max(w2, 0) ⊙ [W1x > 0]).
        let vs = nn::VarStore::new(Device::Cpu);
        let l1 = nn::linear(
            vs.root() / "l1",
            3,
            4,
            nn::LinearConfig {
                bias: false,
                ..Default::default()
            },
        );
        let l2 = nn::linear(
            vs.root() / "l2",
            4,
            1,
            nn::LinearConfig {
                bias: false,
                ..Default::default()
            },
        );
        let w1 = Tensor::from_slice(&[
            1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0,
        ])
        .reshape([4, 3]);
        let w2 = Tensor::from_slice(&[2.0f32, -3.0, 5.0, -1.0]).reshape([1, 4]);
        tch::no_grad(|| {
            l1.ws.shallow_clone().copy_(&w1);
            l2.ws.shallow_clone().copy_(&w2);
        });
        let net = nn::seq_t().add(l1).add_fn(crate::activation::relu).add(l2);
        // h = (1, 2, -1, 2): units 0, 1, 3 open; unit 2 closed.
        let x = Tensor::from_slice(&[1.0f32, 2.0, -1.0]).reshape([1, 3]);
        let zero = Tensor::from_slice(&[0i64]);
        let (vanilla, _, _) = input_gradient(&net, &x, &zero, ReluRule::Vanilla);
        let (guided, _, _) = input_gradient(&net, &x, &zero, ReluRule::Guided);
        // Vanilla: 2·e0 − 3·e1 − 1·(1,1,1) = (1, −4, −1); guided keeps units 0 only: (2, 0, 0).
        assert_eq!(
            Vec::<f32>::try_from(vanilla.reshape([-1])).unwrap(),
            vec![1.0, -4.0, -1.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(guided.reshape([-1])).unwrap(),
            vec![2.0, 0.0, 0.0]
        );
    }
}
