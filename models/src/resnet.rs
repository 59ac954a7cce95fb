//! ResNets: CIFAR-style with basic blocks (3×3 stem, no max-pool), and ImageNet-style
//! ResNet-50 with bottleneck blocks (7×7 stride-2 stem and a max-pool; the stride in
//! the 3×3 convolution, as torchvision's v1.5).
use crate::activation::relu;
use crate::batch_norm::{BatchNorm, BatchStats};
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A bias-free `k × k` convolution with "same" padding (the conv before a batch norm).
pub(crate) fn conv(vs: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(vs, c_in, c_out, k, cfg)
}

#[derive(Debug)]
struct Block {
    c1: nn::Conv2D,
    b1: BatchNorm,
    c2: nn::Conv2D,
    b2: BatchNorm,
    shortcut: Option<(nn::Conv2D, BatchNorm)>,
}

impl Block {
    fn new(vs: &nn::Path, bn: &BatchStats, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| {
            (
                conv(vs / "sc", c_in, c_out, 1, stride),
                bn.layer2d(vs / "sc_bn", c_out),
            )
        });
        Self {
            c1: conv(vs / "c1", c_in, c_out, 3, stride),
            b1: bn.layer2d(vs / "b1", c_out),
            c2: conv(vs / "c2", c_out, c_out, 3, 1),
            b2: bn.layer2d(vs / "b2", c_out),
            shortcut,
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = relu(&x.apply(&self.c1).apply_t(&self.b1, train))
            .apply(&self.c2)
            .apply_t(&self.b2, train);
        let skip = match &self.shortcut {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        relu(&(y + skip))
    }
}

/// A ResNet with `blocks[i]` basic blocks in stage `i` and `width` channels in stage 0.
pub fn resnet(
    vs: &nn::Path,
    bn: &BatchStats,
    blocks: [usize; 4],
    width: i64,
    classes: i64,
) -> nn::SequentialT {
    let mut net = nn::seq_t()
        .add(conv(vs / "stem", 3, width, 3, 1))
        .add(bn.layer2d(vs / "stem_bn", width))
        .add_fn(relu);
    let mut c_in = width;
    for (stage, &count) in blocks.iter().enumerate() {
        let c_out = width << stage;
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            net = net.add(Block::new(
                &(vs / format!("s{stage}b{i}")),
                bn,
                c_in,
                c_out,
                stride,
            ));
            c_in = c_out;
        }
    }
    net.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(vs / "head", c_in, classes, Default::default()))
}

#[derive(Debug)]
struct Bottleneck {
    convs: [(nn::Conv2D, BatchNorm); 3],
    shortcut: Option<(nn::Conv2D, BatchNorm)>,
}

/// Channels out of a bottleneck block per channel of its 3×3 convolution.
const EXPANSION: i64 = 4;

impl Bottleneck {
    fn new(vs: &nn::Path, stats: &BatchStats, c_in: i64, mid: i64, stride: i64) -> Self {
        let c_out = mid * EXPANSION;
        let bn = |name: &str, c| stats.layer2d(vs / name, c);
        let shortcut = (stride != 1 || c_in != c_out)
            .then(|| (conv(vs / "sc", c_in, c_out, 1, stride), bn("sc_bn", c_out)));
        Self {
            convs: [
                (conv(vs / "c1", c_in, mid, 1, 1), bn("b1", mid)),
                (conv(vs / "c2", mid, mid, 3, stride), bn("b2", mid)),
                (conv(vs / "c3", mid, c_out, 1, 1), bn("b3", c_out)),
            ],
            shortcut,
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut y = x.shallow_clone();
        for (i, (c, b)) in self.convs.iter().enumerate() {
            y = y.apply(c).apply_t(b, train);
            if i < 2 {
                y = relu(&y);
            }
        }
        let skip = match &self.shortcut {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        relu(&(y + skip))
    }
}

/// An ImageNet ResNet with `blocks[i]` bottleneck blocks in stage `i` and `width`
/// channels in the stem (ResNet-50: `[3, 4, 6, 3]`, width 64).
pub fn bottleneck_resnet(
    vs: &nn::Path,
    bn: &BatchStats,
    blocks: [usize; 4],
    width: i64,
    classes: i64,
) -> nn::SequentialT {
    let stem = nn::ConvConfig {
        stride: 2,
        padding: 3,
        bias: false,
        ..Default::default()
    };
    let mut net = nn::seq_t()
        .add(nn::conv2d(vs / "stem", 3, width, 7, stem))
        .add(bn.layer2d(vs / "stem_bn", width))
        .add_fn(relu)
        .add_fn(|x| x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false));
    let mut c_in = width;
    for (stage, &count) in blocks.iter().enumerate() {
        let mid = width << stage;
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            net = net.add(Bottleneck::new(
                &(vs / format!("s{stage}b{i}")),
                bn,
                c_in,
                mid,
                stride,
            ));
            c_in = mid * EXPANSION;
        }
    }
    net.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(vs / "head", c_in, classes, Default::default()))
}
