//! `sat._sat`: the compiled core of the Python package `sat` (see `python/sat/` for the
//! Python layer users import). It loads the same plugin libraries as `sat-host`, with
//! the same trust rules, and calls their components on PyTorch tensors without copying
//! them; a Python model is called back for its forward passes.
// `#[sabi_trait]`-generated code from sat-core expands impls in anonymous consts.
#![allow(non_local_definitions)]

mod components;
mod errors;
mod evaluate;
mod model;
mod plugins;
mod tensor;

use pyo3::prelude::*;
use std::path::PathBuf;

/// Records the package's directory of standard plugin libraries (`sat/plugins`).
#[pyfunction]
fn _set_plugin_dir(dir: PathBuf) {
    plugins::set_standard(dir);
}

/// Every component of the plugin libraries found (the package's own, `plugin_dirs`,
/// `SAT_PLUGIN_PATH`): name, kind, description, accepted keys and library.
#[pyfunction]
#[pyo3(name = "components", signature = (*, plugin_dirs = Vec::new(), allow_insecure_plugins = false))]
fn list_components(
    plugin_dirs: Vec<PathBuf>,
    allow_insecure_plugins: bool,
) -> PyResult<Vec<std::collections::HashMap<&'static str, String>>> {
    let registry = plugins::registry(&plugin_dirs, allow_insecure_plugins)?;
    Ok(plugins::describe(&registry))
}

/// `count` images of sat's generated `shapes` task (the quickstart's data): images
/// float32 `[N, 3, size, size]` in `[0, 1]`, labels, boxes `[N, 1, 4]`, masks
/// `[N, 1, size, size]`, presence flags and class names; `split` 0 is the training
/// stream, 1 the test stream (independent).
#[pyfunction]
#[pyo3(signature = (count, *, size = 32, classes = 6, seed = 0, split = 0))]
fn shapes(
    py: Python<'_>,
    count: usize,
    size: i64,
    classes: i64,
    seed: u64,
    split: u64,
) -> PyResult<PyObject> {
    if !(8..=512).contains(&size) || count > 1_000_000 {
        return Err(errors::value(format!(
            "shapes: size must be in 8..=512 and count at most 1000000, got size {size}, count {count}"
        )));
    }
    let data = py
        .allow_threads(|| sat_data::shapes::generate(count, size, classes, seed, split))
        .map_err(errors::value)?;
    let out = pyo3::types::PyDict::new(py);
    out.set_item("images", tensor::to_python(py, &data.images.to_kind(tch::Kind::Float))?)?;
    out.set_item("labels", tensor::to_python(py, &data.labels)?)?;
    if let Some(boxes) = &data.boxes {
        out.set_item("boxes", tensor::to_python(py, boxes)?)?;
    }
    if let Some((masks, present)) = &data.masks {
        out.set_item("masks", tensor::to_python(py, &masks.to_kind(tch::Kind::Float))?)?;
        out.set_item("present", tensor::to_python(py, present)?)?;
    }
    out.set_item("class_names", data.class_names)?;
    Ok(out.into_any().unbind())
}

/// The libtorch version this module was built against.
#[pyfunction]
fn libtorch_version() -> &'static str {
    env!("SAT_LIBTORCH_VERSION")
}

#[pymodule]
fn _sat(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SatError", m.py().get_type::<errors::SatError>())?;
    m.add_class::<components::Attack>()?;
    m.add_class::<components::Saliency>()?;
    m.add_class::<components::Objective>()?;
    m.add_function(wrap_pyfunction!(components::perturb, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::run, m)?)?;
    m.add_function(wrap_pyfunction!(list_components, m)?)?;
    m.add_function(wrap_pyfunction!(libtorch_version, m)?)?;
    m.add_function(wrap_pyfunction!(shapes, m)?)?;
    m.add_function(wrap_pyfunction!(_set_plugin_dir, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
