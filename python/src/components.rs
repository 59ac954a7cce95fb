//! `sat.Attack`, `sat.Saliency`, `sat.Objective` and `sat.perturb`: plugin components
//! called on the caller's tensors, with the host's contract checks (shape, dtype,
//! device, range, budget, the batch left untouched) on every call.
use crate::errors;
use crate::model::{NoModel, PyModel};
use crate::plugins;
use crate::tensor;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sat_core::{AttackBox, Batch, ObjectiveBox, OracleAdapter, Phase, SaliencyBox};
use sat_host::plugins::component::{AttackComponent, ObjectiveComponent, SaliencyComponent};
use sat_host::plugins::oracle::{ModelOracle, TrainingForward};
use sat_host::plugins::registry::Registry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Kind, Tensor};

/// The component behind `mutex` (a call that panicked left nothing half-changed that
/// a later call could trip over: components are called whole or not at all).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Images `[N, C, H, W]` float32, and labels `[N]` int64 on their device.
fn images_and_labels(
    images: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
) -> PyResult<(Tensor, Tensor)> {
    let x = tensor::from_python(images, "images")?;
    let y = tensor::from_python(labels, "labels")?;
    let size = x.size();
    if size.len() != 4 || x.kind() != Kind::Float {
        return Err(errors::value(format!(
            "images: expected a float32 tensor [N, C, H, W] with values in [0, 1], got {:?} {size:?}",
            x.kind()
        )));
    }
    if y.size() != [size[0]] || y.kind() != Kind::Int64 || y.device() != x.device() {
        return Err(errors::value(format!(
            "labels: expected an int64 tensor [{}] on {:?}, got {:?} {:?} on {:?}",
            size[0],
            x.device(),
            y.kind(),
            y.size(),
            y.device()
        )));
    }
    Ok((x.detach(), y))
}

/// The batch of `images` and `labels` for a component call at `epoch` of `epochs`.
fn batch(x: &Tensor, y: &Tensor, epoch: u32, epochs: u32, phase: Phase) -> PyResult<Batch> {
    if epochs == 0 || epoch >= epochs {
        return Err(errors::value(format!(
            "epoch {epoch} of {epochs}: epoch counts from 0 and must be below epochs"
        )));
    }
    Ok(Batch::new(x, y, epoch, epochs, phase))
}

/// Runs `call` (a component call on the model) without the GIL, then re-raises the
/// model's own exception if it raised one, else the component's error as `SatError`.
fn settle<T, E: std::fmt::Display>(
    model: Option<&PyModel>,
    result: Result<T, E>,
) -> PyResult<T> {
    if let Some(e) = model.and_then(PyModel::take_failure) {
        return Err(e);
    }
    result.map_err(errors::sat)
}

/// An attack from a plugin library, called like a torchattacks attack:
/// `Attack("pgd", model, eps=8/255, steps=10)(images, labels)`.
#[pyclass(module = "sat._sat", name = "Attack")]
pub struct Attack {
    // Dropped before the registry that holds its library. A mutex makes the object
    // usable from any Python thread (one call at a time).
    component: Mutex<AttackComponent>,
    model: PyModel,
    _registry: Arc<Registry>,
}

#[pymethods]
impl Attack {
    #[new]
    #[pyo3(signature = (name, model, *, plugin_dirs = Vec::new(), allow_insecure_plugins = false, **config))]
    fn new(
        name: &str,
        model: Py<PyAny>,
        plugin_dirs: Vec<PathBuf>,
        allow_insecure_plugins: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let (component, registry) =
            plugins::made::<AttackBox>(name, &plugin_dirs, allow_insecure_plugins, config)?;
        Ok(Self {
            component,
            model: PyModel::new(model),
            _registry: registry,
        })
    }

    /// Adversarial images for `images` (float32 `[N, C, H, W]` in `[0, 1]`) with true
    /// `labels` (int64 `[N]`), on the model's `classes` classes.
    #[pyo3(signature = (images, labels, classes, *, epoch = 0, epochs = 1))]
    fn __call__(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        classes: u32,
        epoch: u32,
        epochs: u32,
    ) -> PyResult<PyObject> {
        let (x, y) = images_and_labels(images, labels)?;
        let batch = batch(&x, &y, epoch, epochs, Phase::Evaluation)?;
        let (component, model) = (&self.component, &self.model);
        let out = py.allow_threads(move || {
            let adapter = OracleAdapter(ModelOracle { model, classes });
            let made = lock(component).perturb(&batch, &adapter.as_ref());
            made
        });
        let adv = settle(Some(&self.model), out)?;
        tensor::to_python(py, &adv)
    }

    /// The attack's name.
    #[getter]
    fn name(&self) -> String {
        lock(&self.component).origin.name.clone()
    }
    /// Its budget ε (in its norm).
    #[getter]
    fn epsilon(&self) -> f64 {
        lock(&self.component).threat.epsilon
    }
    /// Its norm: `"linf"` or `"l2"`.
    #[getter]
    fn norm(&self) -> &'static str {
        lock(&self.component).threat.norm.as_str()
    }
    /// Its number of gradient steps (0: none).
    #[getter]
    fn steps(&self) -> u32 {
        lock(&self.component).threat.steps
    }
    /// The model it attacks.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyAny> {
        self.model.callable().clone_ref(py)
    }
    /// The plugin library it comes from.
    #[getter]
    fn library(&self) -> PathBuf {
        lock(&self.component).origin.library.clone()
    }
}

/// A saliency source from a plugin library: `Saliency("masks")(images, labels,
/// masks=...)` returns maps in `[-1, 1]`.
#[pyclass(module = "sat._sat", name = "Saliency")]
pub struct Saliency {
    component: Mutex<SaliencyComponent>,
    _registry: Arc<Registry>,
}

#[pymethods]
impl Saliency {
    #[new]
    #[pyo3(signature = (name, *, plugin_dirs = Vec::new(), allow_insecure_plugins = false, **config))]
    fn new(
        name: &str,
        plugin_dirs: Vec<PathBuf>,
        allow_insecure_plugins: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let (component, registry) =
            plugins::made::<SaliencyBox>(name, &plugin_dirs, allow_insecure_plugins, config)?;
        Ok(Self {
            component,
            _registry: registry,
        })
    }

    /// Maps `[N, 1 or C, H, W]` in `[-1, 1]` for `images` and `labels`; `boxes`
    /// (`[N, B, 4]`, pixels, `-1` rows padding), `masks` (`[N, 1, H, W]` in `[0, 1]`)
    /// with `present` (`[N]` bool) and a `teacher` model (with its `classes`) for the
    /// sources that need them.
    #[pyo3(signature = (images, labels, *, boxes = None, masks = None, present = None, teacher = None, classes = 0, epoch = 0, epochs = 1))]
    #[allow(clippy::too_many_arguments)]
    fn __call__(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        boxes: Option<&Bound<'_, PyAny>>,
        masks: Option<&Bound<'_, PyAny>>,
        present: Option<&Bound<'_, PyAny>>,
        teacher: Option<Py<PyAny>>,
        classes: u32,
        epoch: u32,
        epochs: u32,
    ) -> PyResult<PyObject> {
        let (x, y) = images_and_labels(images, labels)?;
        let mut batch = batch(&x, &y, epoch, epochs, Phase::Training)?;
        if let Some(boxes) = boxes {
            batch = batch.with_boxes(&tensor::from_python(boxes, "boxes")?);
        }
        if let Some(masks) = masks {
            let masks = tensor::from_python(masks, "masks")?;
            let present = match present {
                Some(p) => tensor::from_python(p, "present")?,
                None => Tensor::ones([x.size()[0]], (Kind::Bool, x.device())),
            };
            batch = batch.with_masks(&masks, &present);
        }
        let teacher = teacher.map(PyModel::new);
        let (component, teacher_ref) = (&self.component, teacher.as_ref());
        let out = py.allow_threads(move || match teacher_ref {
            Some(model) => {
                let adapter = OracleAdapter(ModelOracle { model, classes });
                let made = lock(component).saliency(&batch, &adapter.as_ref());
                made
            }
            None => {
                let adapter = OracleAdapter(NoModel { keyword: "teacher" });
                let made = lock(component).saliency(&batch, &adapter.as_ref());
                made
            }
        });
        let maps = settle(teacher.as_ref(), out)?;
        tensor::to_python(py, &maps)
    }

    /// The source's name.
    #[getter]
    fn name(&self) -> String {
        lock(&self.component).origin.name.clone()
    }
}

/// A training objective from a plugin library: `Objective("trades")(model, images,
/// inputs, labels)` returns the loss to call `.backward()` on.
#[pyclass(module = "sat._sat", name = "Objective")]
pub struct Objective {
    component: Mutex<ObjectiveComponent>,
    logits: Mutex<Option<Tensor>>,
    _registry: Arc<Registry>,
}

#[pymethods]
impl Objective {
    #[new]
    #[pyo3(signature = (name, *, plugin_dirs = Vec::new(), allow_insecure_plugins = false, **config))]
    fn new(
        name: &str,
        plugin_dirs: Vec<PathBuf>,
        allow_insecure_plugins: bool,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let (component, registry) =
            plugins::made::<ObjectiveBox>(name, &plugin_dirs, allow_insecure_plugins, config)?;
        Ok(Self {
            component,
            logits: Mutex::new(None),
            _registry: registry,
        })
    }

    /// The loss (a scalar with a graph to the model's parameters) of the model being
    /// trained (`classes` logits) on `inputs` (e.g. an attack's output) for the clean
    /// `images` and their `labels`, with `saliency` maps for the objectives that use them.
    #[pyo3(signature = (model, images, inputs, labels, saliency = None, *, classes, epoch = 0, epochs = 1))]
    #[allow(clippy::too_many_arguments)]
    fn __call__(
        &self,
        py: Python<'_>,
        model: Py<PyAny>,
        images: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        saliency: Option<&Bound<'_, PyAny>>,
        classes: u32,
        epoch: u32,
        epochs: u32,
    ) -> PyResult<PyObject> {
        let (x, y) = images_and_labels(images, labels)?;
        let inputs = tensor::from_python(inputs, "inputs")?;
        if inputs.size() != x.size() || inputs.kind() != x.kind() || inputs.device() != x.device() {
            return Err(errors::value(format!(
                "inputs: expected {:?} {:?} on {:?} like images, got {:?} {:?} on {:?}",
                x.size(),
                x.kind(),
                x.device(),
                inputs.size(),
                inputs.kind(),
                inputs.device()
            )));
        }
        let mut batch = batch(&x, &y, epoch, epochs, Phase::Training)?;
        if let Some(s) = saliency {
            batch = batch.with_saliency(&tensor::from_python(s, "saliency")?);
        }
        let model = PyModel::new(model);
        let (component, model_ref) = (&self.component, &model);
        let out = py.allow_threads(move || {
            let adapter = OracleAdapter(TrainingForward {
                model: model_ref,
                classes,
                amp: false,
            });
            let made = lock(component).loss(&batch, &inputs, &adapter.as_ref(), i64::from(classes));
            made
        });
        let checked = settle(Some(&model), out)?;
        *lock(&self.logits) = Some(checked.logits);
        tensor::to_python(py, &checked.loss)
    }

    /// The model's logits on the inputs of the last call.
    #[getter]
    fn logits(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        lock(&self.logits).as_ref().map(|t| tensor::to_python(py, t)).transpose()
    }

    /// The objective's name.
    #[getter]
    fn name(&self) -> String {
        lock(&self.component).origin.name.clone()
    }
}

/// The SAT input `clip(x − ε·g)` for `images` and `saliency` maps at `epoch` of
/// `epochs`; the coin and signs are drawn per sample from `seed` and `indices`.
#[pyfunction]
#[pyo3(signature = (images, saliency, epsilon, epoch, epochs, *, seed, indices = None, base = None, period = None, probability = None, plugin_dirs = Vec::new()))]
#[allow(clippy::too_many_arguments)]
pub fn perturb(
    py: Python<'_>,
    images: &Bound<'_, PyAny>,
    saliency: &Bound<'_, PyAny>,
    epsilon: f64,
    epoch: u32,
    epochs: u32,
    seed: u64,
    indices: Option<&Bound<'_, PyAny>>,
    base: Option<f64>,
    period: Option<f64>,
    probability: Option<f64>,
    plugin_dirs: Vec<PathBuf>,
) -> PyResult<PyObject> {
    let x = tensor::from_python(images, "images")?.detach();
    let n = x.size().first().copied().unwrap_or(0);
    let s = tensor::from_python(saliency, "saliency")?;
    let samples = match indices {
        Some(i) => tensor::from_python(i, "indices")?,
        None => Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)),
    };
    if samples.size() != [n] || samples.kind() != Kind::Int64 {
        return Err(errors::value(format!(
            "indices: expected an int64 tensor [{n}], got {:?} {:?}",
            samples.kind(),
            samples.size()
        )));
    }
    let samples = samples.to_device(tch::Device::Cpu);
    let config = PyDict::new(py);
    config.set_item("epsilon", epsilon)?;
    config.set_item("base", base)?;
    config.set_item("period", period)?;
    config.set_item("probability", probability)?;
    let registry = plugins::registry(&plugin_dirs, false)?;
    let mut attack = plugins::create::<AttackBox>(&registry, "sat", Some(&config))?;
    let y = Tensor::zeros([n], (Kind::Int64, x.device()));
    let batch = batch(&x, &y, epoch, epochs, Phase::Training)?
        .with_saliency(&s)
        .with_draws(seed, &samples);
    let out = py.allow_threads(move || {
        let adapter = OracleAdapter(NoModel { keyword: "model" });
        let made = attack.perturb(&batch, &adapter.as_ref());
        made
    });
    let adv = settle(None, out)?;
    tensor::to_python(py, &adv)
}
