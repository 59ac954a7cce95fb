//! A model as a TorchScript module: traced once in evaluation mode (BatchNorm with its
//! running statistics, normalisation included), weights baked in as constants, so that
//! PyTorch (`torch.jit.load`) runs it without sat.
use crate::ModelError;
use std::path::Path;
use tch::nn::ModuleT;
use tch::{CModule, Kind, Tensor};

/// Batch size of the example the model is traced on. Not 1, so that a shape computed
/// from the batch would show up as a mismatch in [`check_traced`] at another size.
const TRACE_BATCH: i64 = 2;

/// Traces `model` (evaluation mode) on a `[2, channels, size, size]` batch into a
/// TorchScript module whose `forward` maps images in `[0, 1]` to logits. Every variable
/// the model reads must not require a gradient (freeze its `VarStore`): the tracer
/// cannot bake such a tensor in as a constant.
pub fn trace(
    model: &dyn ModuleT,
    channels: i64,
    size: i64,
    device: tch::Device,
) -> Result<CModule, ModelError> {
    let example = Tensor::f_rand([TRACE_BATCH, channels, size, size], (Kind::Float, device))
        .map_err(invalid("making the tracing example"))?;
    let mut forward = |inputs: &[Tensor]| vec![model.forward_t(&inputs[0], false)];
    let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        CModule::create_by_tracing("SatModel", "forward", &[example], &mut forward)
    }))
    .map_err(|_| ModelError::Invalid("tracing the model panicked".into()))?
    .map_err(invalid("tracing the model"))?;
    Ok(traced)
}

/// Checks that `traced` gives the logits of `model` on `images` (any batch size) to
/// within `tolerance`, returning the largest absolute difference.
pub fn check_traced(
    traced: &CModule,
    model: &dyn ModuleT,
    images: &Tensor,
    tolerance: f64,
) -> Result<f64, ModelError> {
    let expected = tch::no_grad(|| model.forward_t(images, false));
    let got = tch::no_grad(|| traced.forward_ts(&[images]))
        .map_err(invalid("running the traced model"))?;
    if got.size() != expected.size() {
        return Err(ModelError::Invalid(format!(
            "the traced model maps a batch of {:?} to {:?}, the model to {:?}",
            images.size(),
            got.size(),
            expected.size()
        )));
    }
    let difference = (got - &expected)
        .f_abs()
        .and_then(|d| d.f_max())
        .and_then(|d| d.f_double_value(&[]))
        .map_err(invalid("comparing the traced model's logits"))?;
    if difference.is_nan() || difference > tolerance {
        return Err(ModelError::Invalid(format!(
            "the traced model's logits differ from the model's by {difference:e} (tolerance {tolerance:e}) on a batch of {:?}",
            images.size()
        )));
    }
    Ok(difference)
}

/// Saves `traced` to `path` (TorchScript archive).
pub fn save(traced: &CModule, path: &Path) -> Result<(), ModelError> {
    traced
        .save(path)
        .map_err(invalid(&format!("saving {}", path.display())))
}

/// Maps a tch error to [`ModelError::Invalid`] with `what` in front.
fn invalid(what: &str) -> impl Fn(tch::TchError) -> ModelError + '_ {
    move |e| ModelError::Invalid(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Normalized};
    use tch::{nn, Device};

    fn frozen(arch: &str) -> (nn::VarStore, Box<dyn ModuleT>) {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let inner = build(&vs.root(), arch, 4, 5).unwrap();
        vs.freeze();
        let model = Normalized::new(inner, &[0.5, 0.4, 0.3], &[0.2, 0.25, 0.3], Device::Cpu);
        (vs, Box::new(model.unwrap()))
    }

    #[test]
    fn a_traced_model_matches_the_model_at_any_batch_size() {
        for arch in ["small-cnn", "mlp", "resnet10", "preact-resnet18"] {
            let (_vs, model) = frozen(arch);
            let traced = trace(model.as_ref(), 3, 16, Device::Cpu).unwrap();
            for n in [1, 2, 7] {
                let x = Tensor::rand([n, 3, 16, 16], (Kind::Float, Device::Cpu));
                let d = check_traced(&traced, model.as_ref(), &x, 1e-5).unwrap();
                assert!(d <= 1e-5, "{arch} n={n}: {d}");
            }
        }
    }

    #[test]
    fn a_saved_module_loads_and_gives_the_same_logits() {
        let (_vs, model) = frozen("small-cnn");
        let traced = trace(model.as_ref(), 3, 16, Device::Cpu).unwrap();
        let dir = std::env::temp_dir().join(format!("sat-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.pt");
        save(&traced, &file).unwrap();
        let loaded = crate::TorchScriptModel::load(&file, Device::Cpu).unwrap();
        let x = Tensor::rand([3, 3, 16, 16], (Kind::Float, Device::Cpu));
        let a = tch::no_grad(|| model.forward_t(&x, false));
        let b = tch::no_grad(|| loaded.forward_t(&x, false));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(b.size(), [3, 5]);
        assert!((a - b).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn a_model_with_trainable_variables_is_refused_not_crashed() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs.root(), "mlp", 4, 5).unwrap();
        let e = trace(model.as_ref(), 3, 16, Device::Cpu).err().unwrap();
        assert!(e.to_string().contains("tracing the model"), "{e}");
    }
}
