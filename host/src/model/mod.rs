//! Classifiers, built on `tch::nn`. Inputs are images in `[0, 1]`; any normalisation
//! belongs inside the model.
mod resnet;

use tch::nn::{self, ModuleT};

/// The architectures `[model] arch` accepts.
pub const ARCHITECTURES: [&str; 4] = ["small-cnn", "resnet10", "resnet18", "resnet34"];

/// Builds `arch` with `width` channels in its first stage under `vs`.
pub fn build(
    vs: &nn::Path,
    arch: &str,
    width: i64,
    classes: i64,
) -> Result<Box<dyn ModuleT>, String> {
    if width < 1 {
        return Err(format!("model width must be positive, got {width}"));
    }
    Ok(match arch {
        "small-cnn" => Box::new(small_cnn(vs, width, classes)),
        "resnet10" => Box::new(resnet::resnet(vs, [1, 1, 1, 1], width, classes)),
        "resnet18" => Box::new(resnet::resnet(vs, [2, 2, 2, 2], width, classes)),
        "resnet34" => Box::new(resnet::resnet(vs, [3, 4, 6, 3], width, classes)),
        other => {
            return Err(format!(
                "unknown model arch `{other}`{}; accepted: {}",
                crate::suggest::did_you_mean(other, ARCHITECTURES),
                ARCHITECTURES.join(", ")
            ))
        }
    })
}

fn conv_bn(vs: &nn::Path, c_in: i64, c_out: i64) -> nn::SequentialT {
    let conv = nn::ConvConfig {
        padding: 1,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(vs / "conv", c_in, c_out, 3, conv))
        .add(nn::batch_norm2d(vs / "bn", c_out, Default::default()))
        .add_fn(|x| x.relu())
}

/// A small VGG-style network for CPU runs: three stages of conv-BN-ReLU, global
/// average pooling, a linear head.
pub fn small_cnn(vs: &nn::Path, width: i64, classes: i64) -> nn::SequentialT {
    let (w1, w2, w3) = (width, 2 * width, 4 * width);
    nn::seq_t()
        .add(conv_bn(&(vs / "c1"), 3, w1))
        .add(conv_bn(&(vs / "c2"), w1, w1))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(conv_bn(&(vs / "c3"), w1, w2))
        .add(conv_bn(&(vs / "c4"), w2, w2))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(conv_bn(&(vs / "c5"), w2, w3))
        .add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
        .add(nn::linear(vs / "head", w3, classes, Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn every_architecture_maps_images_to_logits() {
        for arch in ARCHITECTURES {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = build(&vs.root(), arch, 8, 5).unwrap();
            let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            assert_eq!(model.forward_t(&x, false).size(), vec![2, 5], "{arch}");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let e = build(&vs.root(), "resnet81", 8, 5).err().unwrap();
        assert!(e.contains("did you mean `resnet18`"), "{e}");
    }
}
