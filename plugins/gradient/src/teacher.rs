//! The model whose gradients make the maps: the host's model (through the oracle), a
//! checkpoint of this project, or a TorchScript file. Loaded on the first batch, onto
//! the batch's device.
use sat_core::{Objective, Oracle, PluginError};
use sat_models::relu_backprop::{self, ReluRule};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// The keys every gradient source shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// `"self"`, a `.safetensors` checkpoint of this project, or a TorchScript `.pt` file
    /// (paths relative to the working directory).
    pub teacher: String,
    /// Architecture of a checkpoint teacher (as `[model] arch`).
    pub arch: String,
    /// Its width (as `[model] width`).
    pub width: i64,
    /// Its number of classes (unset: the host model's).
    pub classes: Option<i64>,
    /// Its in-model normalisation, if it was trained with one.
    pub mean: Vec<f64>,
    /// See `mean`.
    pub std: Vec<f64>,
    /// The class each map explains.
    pub target: crate::Target,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            teacher: "self".into(),
            arch: "small-cnn".into(),
            width: 32,
            classes: None,
            mean: Vec::new(),
            std: Vec::new(),
            target: crate::Target::Label,
        }
    }
}

/// A teacher model of its own (not the host's).
struct Loaded {
    /// Keeps the variables of a checkpoint teacher alive.
    _vs: nn::VarStore,
    model: Box<dyn ModuleT>,
    /// Whether the model's ReLUs are visible (a model of this project).
    native: bool,
}

/// A teacher, loaded lazily.
pub struct Teacher {
    config: TeacherConfig,
    loaded: Option<Loaded>,
}

impl Teacher {
    /// A teacher described by `config` (nothing is loaded yet).
    pub fn new(config: TeacherConfig) -> Result<Self, PluginError> {
        if config.teacher.is_empty() {
            return Err(PluginError::config(
                "teacher must be \"self\" or a checkpoint / TorchScript path",
            ));
        }
        Ok(Self {
            config,
            loaded: None,
        })
    }

    /// Whether the teacher is the host's model.
    pub fn is_self(&self) -> bool {
        self.config.teacher == "self"
    }

    fn load(&mut self, device: Device, oracle: Oracle<'_, '_>) -> Result<(), PluginError> {
        if self.is_self() || self.loaded.is_some() {
            return Ok(());
        }
        let c = &self.config;
        let path = std::path::Path::new(&c.teacher);
        if !path.is_file() {
            return Err(PluginError::config(format!(
                "teacher {}: no such file",
                path.display()
            )));
        }
        let script = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pt" | "ts" | "jit")
        );
        let mut vs = nn::VarStore::new(device);
        let model: Box<dyn ModuleT> = if script {
            Box::new(
                sat_models::TorchScriptModel::load(path, device)
                    .map_err(|e| PluginError::config(e.to_string()))?,
            )
        } else {
            let classes = match c.classes {
                Some(classes) if classes > 0 => classes,
                Some(classes) => {
                    return Err(PluginError::config(format!(
                        "teacher {}: classes must be at least 1, got {classes}",
                        c.teacher
                    )))
                }
                None => oracle.num_classes()? as i64,
            };
            let model = sat_models::build(&vs.root(), &c.arch, c.width, classes)
                .map_err(|e| PluginError::config(format!("teacher: {e}")))?;
            load_weights(&mut vs, path).map_err(|e| {
                PluginError::config(format!(
                    "teacher {}: {e} (is it a checkpoint of arch `{}` with width {} and {classes} classes?)",
                    path.display(),
                    c.arch,
                    c.width
                ))
            })?;
            vs.freeze();
            if c.mean.is_empty() && c.std.is_empty() {
                model
            } else {
                Box::new(
                    sat_models::Normalized::new(model, &c.mean, &c.std, device)
                        .map_err(|e| PluginError::config(format!("teacher: {e}")))?,
                )
            }
        };
        self.loaded = Some(Loaded {
            _vs: vs,
            model,
            native: !script,
        });
        Ok(())
    }

    /// The teacher's logits on `images`.
    pub fn logits(
        &mut self,
        images: &Tensor,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        self.load(images.device(), oracle)?;
        match &self.loaded {
            None => oracle.logits(images),
            Some(Loaded { model, .. }) => {
                Ok(tch::no_grad(|| model.forward_t(images, false)).f_to_kind(Kind::Float)?)
            }
        }
    }

    /// The classes the maps explain: labels, or the teacher's predictions.
    pub fn targets(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        oracle: Oracle<'_, '_>,
    ) -> Result<Tensor, PluginError> {
        match self.config.target {
            crate::Target::Label => Ok(labels.shallow_clone()),
            crate::Target::Predicted => Ok(self.logits(images, oracle)?.f_argmax(-1, false)?),
        }
    }

    /// `∇ₓ Σᵢ logit[i, target[i]]` under `rule`, with the recorded ReLU cuts (empty for
    /// the host's model and TorchScript).
    pub fn gradient(
        &mut self,
        images: &Tensor,
        target: &Tensor,
        rule: ReluRule,
        oracle: Oracle<'_, '_>,
        what: &str,
    ) -> Result<(Tensor, Vec<sat_models::activation::Cut>), PluginError> {
        self.load(images.device(), oracle)?;
        match &self.loaded {
            None => {
                if rule != ReluRule::Vanilla {
                    return Err(self.needs_native(what));
                }
                let g = oracle.input_gradient(images, Objective::logit(target))?;
                Ok((g.gradient, Vec::new()))
            }
            Some(Loaded { model, native, .. }) => {
                if rule != ReluRule::Vanilla && !native {
                    return Err(self.needs_native(what));
                }
                let (g, cuts, _) = tch::with_grad(|| {
                    relu_backprop::input_gradient(model.as_ref(), images, target, rule)
                });
                Ok((g, cuts))
            }
        }
    }

    /// The native teacher model, for methods that read activations.
    pub fn native_model(
        &mut self,
        device: Device,
        oracle: Oracle<'_, '_>,
        what: &str,
    ) -> Result<&dyn ModuleT, PluginError> {
        self.load(device, oracle)?;
        match &self.loaded {
            Some(Loaded {
                model,
                native: true,
                ..
            }) => Ok(model.as_ref()),
            _ => Err(self.needs_native(what)),
        }
    }

    fn needs_native(&self, what: &str) -> PluginError {
        PluginError::config(format!(
            "{what} needs to see the teacher's ReLUs: give `teacher` a checkpoint of this project (with its arch and width), not {}",
            if self.is_self() { "\"self\"".to_string() } else { format!("the TorchScript file {}", self.config.teacher) }
        ))
    }
}

/// Loads a teacher checkpoint into `vs`: the file is opened through `sat_input` (a
/// regular file within the tensor-file cap) and read from that open file, as
/// safetensors when it is named `*.safetensors`, else in libtorch's format.
fn load_weights(vs: &mut nn::VarStore, path: &std::path::Path) -> Result<(), String> {
    let input = sat_input::open(path, sat_input::Kind::Tensors).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "safetensors") {
        let named: std::collections::HashMap<String, tch::Tensor> =
            tch::Tensor::read_safetensors(input.fd_path())
                .map_err(|e| sat_models::torch_message(&e))?
                .into_iter()
                .collect();
        tch::no_grad(|| {
            for (name, var) in vs.variables() {
                let src = named
                    .get(&name)
                    .ok_or_else(|| format!("has no tensor `{name}`"))?;
                if src.size() != var.size() || src.kind() != var.kind() {
                    return Err(format!(
                        "`{name}` is {:?} {:?}, the model's {:?} {:?}",
                        src.kind(),
                        src.size(),
                        var.kind(),
                        var.size()
                    ));
                }
                var.shallow_clone().copy_(src);
            }
            Ok(())
        })
    } else {
        vs.load_from_stream(std::io::BufReader::new(input.into_file()))
            .map_err(|e| sat_models::torch_message(&e))
    }
}
