//! Pre-activation ResNet-18 (He et al. 2016) and Wide ResNets (Zagoruyko and Komodakis
//! 2016), CIFAR-style: 3×3 stem, no max-pool, BN-ReLU before each convolution.
use crate::activation::relu;
use crate::batch_norm::{BatchNorm, BatchStats};
use crate::resnet::conv;
use crate::ModelError;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A pre-activation basic block: `BN-ReLU-conv3×3-BN-ReLU-conv3×3`, with a 1×1
/// projection of the pre-activated input when the shape changes.
#[derive(Debug)]
struct PreActBlock {
    b1: BatchNorm,
    c1: nn::Conv2D,
    b2: BatchNorm,
    c2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreActBlock {
    fn new(vs: &nn::Path, bn: &BatchStats, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self {
            b1: bn.layer2d(vs / "b1", c_in),
            c1: conv(vs / "c1", c_in, c_out, 3, stride),
            b2: bn.layer2d(vs / "b2", c_out),
            c2: conv(vs / "c2", c_out, c_out, 3, 1),
            shortcut: (stride != 1 || c_in != c_out)
                .then(|| conv(vs / "sc", c_in, c_out, 1, stride)),
        }
    }
}

impl ModuleT for PreActBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let a = relu(&x.apply_t(&self.b1, train));
        let skip = match &self.shortcut {
            Some(c) => a.apply(c),
            None => x.shallow_clone(),
        };
        relu(&a.apply(&self.c1).apply_t(&self.b2, train)).apply(&self.c2) + skip
    }
}

fn stages(
    vs: &nn::Path,
    bn: &BatchStats,
    mut net: nn::SequentialT,
    c_in: i64,
    widths: &[i64],
    blocks: usize,
    first_stride: i64,
) -> (nn::SequentialT, i64) {
    let mut c = c_in;
    for (stage, &w) in widths.iter().enumerate() {
        for i in 0..blocks {
            let stride = if i == 0 && stage > 0 {
                2
            } else if i == 0 {
                first_stride
            } else {
                1
            };
            net = net.add(PreActBlock::new(
                &(vs / format!("s{stage}b{i}")),
                bn,
                c,
                w,
                stride,
            ));
            c = w;
        }
    }
    (net, c)
}

fn head(
    vs: &nn::Path,
    bn: &BatchStats,
    net: nn::SequentialT,
    c: i64,
    classes: i64,
) -> nn::SequentialT {
    net.add(bn.layer2d(vs / "final_bn", c))
        .add_fn(|x| relu(x).adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(vs / "head", c, classes, Default::default()))
}

/// PreAct ResNet-18: four stages of two blocks, `width`·(1, 2, 4, 8) channels.
pub fn preact_resnet18(
    vs: &nn::Path,
    bn: &BatchStats,
    width: i64,
    classes: i64,
) -> nn::SequentialT {
    let net = nn::seq_t().add(conv(vs / "stem", 3, width, 3, 1));
    let widths = [width, 2 * width, 4 * width, 8 * width];
    let (net, c) = stages(vs, bn, net, width, &widths, 2, 1);
    head(vs, bn, net, c, classes)
}

/// WRN-`depth`-`widen`: `(depth − 4) / 6` blocks per stage, 16·`widen`·(1, 2, 4) channels.
pub fn wide_resnet(
    vs: &nn::Path,
    bn: &BatchStats,
    depth: i64,
    widen: i64,
    classes: i64,
) -> Result<nn::SequentialT, ModelError> {
    if depth < 10 || (depth - 4) % 6 != 0 || widen < 1 {
        return Err(ModelError::Invalid(format!(
            "wrn-{depth}-{widen}: depth must be 6n + 4 (10, 16, 22, 28, 34, 40, …) and the widening factor positive"
        )));
    }
    let blocks = ((depth - 4) / 6) as usize;
    let net = nn::seq_t().add(conv(vs / "stem", 3, 16, 3, 1));
    let widths = [16 * widen, 32 * widen, 64 * widen];
    let (net, c) = stages(vs, bn, net, 16, &widths, blocks, 1);
    Ok(head(vs, bn, net, c, classes))
}
