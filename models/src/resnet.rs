//! CIFAR-style ResNets (3×3 stem, no max-pool) with basic blocks.
use crate::activation::relu;
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
    b1: nn::BatchNorm,
    c2: nn::Conv2D,
    b2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || c_in != c_out).then(|| {
            (
                conv(vs / "sc", c_in, c_out, 1, stride),
                nn::batch_norm2d(vs / "sc_bn", c_out, Default::default()),
            )
        });
        Self {
            c1: conv(vs / "c1", c_in, c_out, 3, stride),
            b1: nn::batch_norm2d(vs / "b1", c_out, Default::default()),
            c2: conv(vs / "c2", c_out, c_out, 3, 1),
            b2: nn::batch_norm2d(vs / "b2", c_out, Default::default()),
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
pub fn resnet(vs: &nn::Path, blocks: [usize; 4], width: i64, classes: i64) -> nn::SequentialT {
    let mut net = nn::seq_t()
        .add(conv(vs / "stem", 3, width, 3, 1))
        .add(nn::batch_norm2d(vs / "stem_bn", width, Default::default()))
        .add_fn(relu);
    let mut c_in = width;
    for (stage, &count) in blocks.iter().enumerate() {
        let c_out = width << stage;
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            net = net.add(Block::new(
                &(vs / format!("s{stage}b{i}")),
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
