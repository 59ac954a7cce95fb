//! Classifiers, built on `tch::nn`. Inputs are images in `[0, 1]`; any normalisation
//! belongs inside the model. Every ReLU goes through [`activation::relu`], so saliency
//! methods can run their own backward rule through the activations.
pub mod activation;
pub mod arch;
mod batch_norm;
pub mod export;
mod preact;
pub mod relu_backprop;
mod resnet;
mod torchscript;

pub use arch::Arch;
pub use batch_norm::{BatchNorm, BatchStats, StatsReducer};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};
pub use torchscript::{torch_message, without_frames, TorchScriptModel};

/// Why a model cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `arch` names no architecture of [`ARCHITECTURES`].
    #[error("unknown model arch `{0}`")]
    UnknownArch(String),
    /// Any other problem, described.
    #[error("{0}")]
    Invalid(String),
}

/// The architectures `[model] arch` accepts (`wrn-D-K` for any valid depth and width).
pub const ARCHITECTURES: [&str; 9] = [
    "small-cnn",
    "mlp",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "preact-resnet18",
    "wrn-28-10",
    "wrn-34-10",
];

/// Builds `arch` with `width` channels in its first stage under `vs` (WRNs take their
/// width from their name). The name, `width` and `classes` are ranged (see [`arch`]),
/// and on the CPU the model must fit in the memory available, before anything is
/// allocated. BatchNorm layers use their local batch ([`build_with`] for others).
pub fn build(
    vs: &nn::Path,
    arch: &str,
    width: i64,
    classes: i64,
) -> Result<Box<dyn ModuleT>, ModelError> {
    build_with(vs, arch, width, classes, &BatchStats::local())
}

/// [`build`], with BatchNorm layers taking their training-mode batch statistics from
/// `bn` (synchronised BatchNorm in a data-parallel run). Variables are [`build`]'s.
pub fn build_with(
    vs: &nn::Path,
    arch: &str,
    width: i64,
    classes: i64,
    bn: &BatchStats,
) -> Result<Box<dyn ModuleT>, ModelError> {
    let parsed = Arch::parse(arch)?;
    arch::check_sizes(width, classes)?;
    if vs.device() == tch::Device::Cpu {
        let what = format!("model arch `{arch}` (width {width}, {classes} classes)");
        arch::check_fits(
            &what,
            parsed.values(width, classes),
            arch::available_memory(),
        )?;
    }
    Ok(match parsed {
        Arch::SmallCnn => Box::new(small_cnn_with(vs, bn, width, classes)),
        Arch::Mlp => Box::new(mlp(vs, width, classes)),
        Arch::ResNet(blocks) => Box::new(resnet::resnet(vs, bn, blocks, width, classes)),
        Arch::Bottleneck(blocks) => {
            Box::new(resnet::bottleneck_resnet(vs, bn, blocks, width, classes))
        }
        Arch::PreActResNet18 => Box::new(preact::preact_resnet18(vs, bn, width, classes)),
        Arch::Wrn { depth, widen } => Box::new(preact::wide_resnet(vs, bn, depth, widen, classes)?),
    })
}

/// `text` cut to at most `max` characters, the cut marked with `…`.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_string(),
    }
}

/// A model behind a fixed per-channel normalisation `(x − mean) / std`, so that attacks
/// and saliency still see images in `[0, 1]`.
pub struct Normalized {
    mean: Tensor,
    std: Tensor,
    inner: Box<dyn ModuleT>,
}

impl std::fmt::Debug for Normalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalized").finish_non_exhaustive()
    }
}

impl Normalized {
    /// Wraps `inner`; `mean` and `std` have one value per channel (3) or one for all.
    pub fn new(
        inner: Box<dyn ModuleT>,
        mean: &[f64],
        std: &[f64],
        device: tch::Device,
    ) -> Result<Self, ModelError> {
        let ok = |v: &[f64]| v.len() == 1 || v.len() == 3;
        if !ok(mean) || !ok(std) {
            return Err(ModelError::Invalid(
                "mean and std need 1 or 3 values".into(),
            ));
        }
        if std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "std must be positive, got {std:?}"
            )));
        }
        let column = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .reshape([1, -1, 1, 1])
                .to_device(device)
        };
        Ok(Self {
            mean: column(mean),
            std: column(std),
            inner,
        })
    }
}

impl ModuleT for Normalized {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.inner.forward_t(&((x - &self.mean) / &self.std), train)
    }
}

/// Runs `model` once on a zero batch of `[1, 3, size, size]` and checks it returns
/// `[1, classes]` logits, so a mismatched model fails at start-up with a clear message.
pub fn probe(
    model: &dyn ModuleT,
    size: i64,
    classes: i64,
    device: tch::Device,
) -> Result<(), ModelError> {
    let x = Tensor::zeros([1, 3, size, size], (Kind::Float, device));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tch::no_grad(|| model.forward_t(&x, false))
    }))
    .map_err(|p| {
        let message = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        ModelError::Invalid(format!(
            "the model fails on a [1, 3, {size}, {size}] batch: {message}"
        ))
    })?;
    if out.size() != [1, classes] {
        return Err(ModelError::Invalid(format!(
            "the model maps a [1, 3, {size}, {size}] batch to {:?}; the dataset needs [1, {classes}] logits",
            out.size()
        )));
    }
    check_logits(&out, 1, classes, false).map_err(ModelError::Invalid)?;
    if !finite(&out) {
        return Err(ModelError::Invalid(format!(
            "the model's logits on a [1, 3, {size}, {size}] batch of zeros are not finite (NaN or infinite weights?)"
        )));
    }
    Ok(())
}

/// Checks that `model`'s output on a batch of `size`×`size` images depends on the
/// input through autograd, as attacks, saliency and training need: a model that
/// detaches its output (or returns integers) is refused here rather than failing, or
/// crashing, inside a gradient computation.
pub fn probe_gradient(
    model: &dyn ModuleT,
    size: i64,
    classes: i64,
    device: tch::Device,
) -> Result<(), ModelError> {
    let x = Tensor::zeros([1, 3, size, size], (Kind::Float, device)).set_requires_grad(true);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tch::with_grad(|| model.forward_t(&x, false))
    }))
    .map_err(|_| {
        ModelError::Invalid("the model fails when its input requires a gradient".into())
    })?;
    check_logits(&out, 1, classes, true).map_err(ModelError::Invalid)
}

/// Whether every element of `t` is finite.
pub fn finite(t: &Tensor) -> bool {
    t.f_isfinite()
        .and_then(|f| f.f_all())
        .and_then(|a| a.f_int64_value(&[]))
        .map(|v| v != 0)
        .unwrap_or(false)
}

/// Checks a model's output for a batch of `batch` images: a floating-point tensor of
/// shape `[batch, classes]`, attached to the autograd graph when `needs_grad`.
pub fn check_logits(
    out: &Tensor,
    batch: i64,
    classes: i64,
    needs_grad: bool,
) -> Result<(), String> {
    if !out.defined() {
        return Err("the model returned an undefined tensor".into());
    }
    let kind = out.f_kind().map_err(|e| e.to_string())?;
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(format!(
            "the model's output has dtype {kind:?}; logits must be floating-point"
        ));
    }
    if out.size() != [batch, classes] {
        return Err(format!(
            "the model's output has shape {:?}; expected [{batch}, {classes}] logits",
            out.size()
        ));
    }
    if needs_grad && !out.requires_grad() {
        return Err(
            "the model's output does not require a gradient (detached inside forward?): attacks, saliency and training need gradients through it"
                .into(),
        );
    }
    Ok(())
}

fn conv_bn(vs: &nn::Path, bn: &BatchStats, c_in: i64, c_out: i64) -> nn::SequentialT {
    let conv = nn::ConvConfig {
        padding: 1,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(vs / "conv", c_in, c_out, 3, conv))
        .add(bn.layer2d(vs / "bn", c_out))
        .add_fn(activation::relu)
}

/// A two-layer perceptron on the image pooled to 8×8 (`width` hidden units): the one
/// architecture without BatchNorm, whose output for a sample does not depend on the
/// rest of its batch. Data-parallel training is then exactly large-batch training
/// (the equivalence tests of tests/distributed.rs use it); also a fast baseline.
pub fn mlp(vs: &nn::Path, width: i64, classes: i64) -> nn::SequentialT {
    nn::seq_t()
        .add_fn(|x| x.adaptive_avg_pool2d([8, 8]).flatten(1, -1))
        .add(nn::linear(vs / "fc1", 3 * 64, width, Default::default()))
        .add_fn(activation::relu)
        .add(nn::linear(vs / "head", width, classes, Default::default()))
}

/// A small VGG-style network for CPU runs: three stages of conv-BN-ReLU, global
/// average pooling, a linear head.
pub fn small_cnn(vs: &nn::Path, width: i64, classes: i64) -> nn::SequentialT {
    small_cnn_with(vs, &BatchStats::local(), width, classes)
}

fn small_cnn_with(vs: &nn::Path, bn: &BatchStats, width: i64, classes: i64) -> nn::SequentialT {
    let (w1, w2, w3) = (width, 2 * width, 4 * width);
    nn::seq_t()
        .add(conv_bn(&(vs / "c1"), bn, 3, w1))
        .add(conv_bn(&(vs / "c2"), bn, w1, w1))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(conv_bn(&(vs / "c3"), bn, w1, w2))
        .add(conv_bn(&(vs / "c4"), bn, w2, w2))
        .add_fn(|x| x.max_pool2d_default(2))
        .add(conv_bn(&(vs / "c5"), bn, w2, w3))
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
        assert!(
            matches!(&e, ModelError::UnknownArch(a) if a == "resnet81"),
            "{e}"
        );
        let e = build(&vs.root(), "wrn-27-10", 8, 5)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("6n + 4"), "{e}");
    }

    #[test]
    fn resnet50_has_torchvisions_parameter_count() {
        // torchvision.models.resnet50(): 25 557 032 parameters for 1000 classes.
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs.root(), "resnet50", 64, 1000).unwrap();
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert_eq!(count, 25_557_032);
        let x = Tensor::rand([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        assert_eq!(model.forward_t(&x, false).size(), vec![1, 1000]);
    }

    #[test]
    fn wide_resnet_has_the_published_parameter_count() {
        // WRN-28-10 on CIFAR-10: 36.5 M parameters (Zagoruyko and Komodakis, Table 1).
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = build(&vs.root(), "wrn-28-10", 1, 10).unwrap();
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert!((36_400_000..36_600_000).contains(&count), "{count}");
        // PreAct ResNet-18 at width 64: 11.17 M.
        let vs = nn::VarStore::new(Device::Cpu);
        let _model = build(&vs.root(), "preact-resnet18", 64, 10).unwrap();
        let count: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        assert!((11_100_000..11_250_000).contains(&count), "{count}");
    }

    #[test]
    fn normalisation_is_applied_inside_the_model() {
        let vs = nn::VarStore::new(Device::Cpu);
        let identity: Box<dyn ModuleT> = Box::new(nn::seq_t().add_fn(|x| x.shallow_clone()));
        let _ = &vs;
        let model =
            Normalized::new(identity, &[0.5, 0.25, 0.0], &[0.5, 0.25, 2.0], Device::Cpu).unwrap();
        let x = Tensor::ones([1, 3, 2, 2], (Kind::Float, Device::Cpu));
        let y = model.forward_t(&x, false);
        assert_eq!(
            Vec::<f32>::try_from(y.mean_dim(&[2i64, 3][..], false, Kind::Float).reshape([-1]))
                .unwrap(),
            vec![1.0, 3.0, 0.5]
        );
        assert!(Normalized::new(Box::new(nn::seq_t()), &[0.0], &[0.0], Device::Cpu).is_err());
    }

    #[test]
    fn probe_rejects_a_model_with_the_wrong_number_of_classes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs.root(), "small-cnn", 4, 5).unwrap();
        assert!(probe(model.as_ref(), 16, 5, Device::Cpu).is_ok());
        let e = probe(model.as_ref(), 16, 7, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1, 7]"), "{e}");
    }
}
