//! The plugin libraries as the package loads them — the same search and trust rules as
//! `sat-host`: the package's own `sat/plugins/` directory (standard plugins, scanned for
//! `libsat_plugin_*`), then `plugin_dirs=`, then `SAT_PLUGIN_PATH`, every library
//! passing the ownership check — and components made from keyword arguments.
use crate::errors;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use sat_host::plugins::component::Component;
use sat_host::plugins::pipeline::{create_with, Wrap};
use sat_host::plugins::registry::{Registry, SearchPaths};
use sat_host::plugins::component::ComponentHandle;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The package's directory of standard plugin libraries (set by `sat/__init__.py`).
static STANDARD: OnceLock<PathBuf> = OnceLock::new();
/// Registries already loaded, by their search paths.
static LOADED: Mutex<Vec<(Vec<PathBuf>, Arc<Registry>)>> = Mutex::new(Vec::new());

/// Records the package's plugin directory (once; later calls are ignored).
pub fn set_standard(dir: PathBuf) {
    let _ = STANDARD.set(dir);
}

/// The search paths for `plugin_dirs` (with `SAT_PLUGIN_PATH` read now).
pub fn search_paths(plugin_dirs: &[PathBuf], allow_insecure: bool) -> SearchPaths {
    let mut paths = SearchPaths::new(plugin_dirs, &[], allow_insecure);
    paths.standard = STANDARD.get().cloned().into_iter().collect();
    paths
}

/// The plugin directories as `sat-host --plugin-dir` takes them, the package's own first.
pub fn command_line_dirs(plugin_dirs: &[PathBuf]) -> Vec<PathBuf> {
    STANDARD.get().cloned().into_iter().chain(plugin_dirs.iter().cloned()).collect()
}

/// The registry of `plugin_dirs` (loaded once per process and list of directories).
pub fn registry(plugin_dirs: &[PathBuf], allow_insecure: bool) -> PyResult<Arc<Registry>> {
    let paths = search_paths(plugin_dirs, allow_insecure);
    let key: Vec<PathBuf> = paths.standard.iter().chain(&paths.user).cloned().collect();
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, r)) = loaded.iter().find(|(k, _)| *k == key) {
        return Ok(r.clone());
    }
    let registry = Arc::new(Registry::discover(&paths).map_err(errors::sat)?);
    if registry.entries().next().is_none() {
        return Err(errors::sat(format!(
            "no plugin library found (searched {}); reinstall the package (scripts/setup-python) or pass plugin_dirs=",
            key.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    loaded.push((key, registry.clone()));
    Ok(registry)
}

/// The component `name` of kind `B` from keywords (see [`create`]), behind a mutex, with
/// the registry that holds its library (which must outlive it).
pub fn made<B: ComponentHandle>(
    name: &str,
    plugin_dirs: &[PathBuf],
    allow_insecure: bool,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<(Mutex<Component<B>>, Arc<Registry>)>
where
    Component<B>: Wrap<B>,
{
    let registry = registry(plugin_dirs, allow_insecure)?;
    let component = create::<B>(&registry, name, config)?;
    Ok((Mutex::new(component), registry))
}

/// Keyword aliases in torchattacks' names.
const ALIASES: &[(&str, &str)] = &[("eps", "epsilon"), ("alpha", "step_size")];

/// The component `name` of kind `B` configured by `config` (keyword arguments; `None`
/// values are left out, so the component's default applies). A key the component does
/// not accept is a `TypeError` listing those it does.
pub fn create<B: ComponentHandle>(
    registry: &Registry,
    name: &str,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<Component<B>>
where
    Component<B>: Wrap<B>,
{
    // The registry's message suggests a near name and lists those available.
    let entry = registry.find(name, B::KIND).map_err(errors::value)?;
    let accepted: Vec<String> = entry.info.keys.iter().map(|k| k.to_string()).collect();
    let mut table = toml::Table::new();
    if let Some(config) = config {
        for (key, value) in config.iter() {
            let key: String = key.extract()?;
            let key = ALIASES
                .iter()
                .find(|(alias, _)| *alias == key && !accepted.contains(&key))
                .map_or(key.clone(), |(_, to)| (*to).to_owned());
            if !accepted.contains(&key) {
                let near = accepted
                    .iter()
                    .filter(|k| strsim::jaro_winkler(k, &key) > 0.8)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .next()
                    .unwrap_or_default();
                return Err(errors::type_error(format!(
                    "{} `{name}` has no key `{key}`{near}; it accepts: {}",
                    B::KIND.noun(),
                    accepted.join(", ")
                )));
            }
            if value.is_none() {
                continue;
            }
            let value = to_toml(&value).map_err(|m| errors::type_error(format!("{name}: `{key}`: {m}")))?;
            table.insert(key, value);
        }
    }
    create_with::<B>(registry, name, &table).map_err(errors::sat)
}

/// A Python value as TOML: bool, int, float, str, and lists and dicts of them.
pub fn to_toml(value: &Bound<'_, PyAny>) -> Result<toml::Value, String> {
    if value.is_instance_of::<PyBool>() {
        return Ok(toml::Value::Boolean(value.extract().map_err(|e| e.to_string())?));
    }
    if value.is_instance_of::<PyInt>() {
        return value
            .extract::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "an integer beyond 64 bits".to_owned());
    }
    if value.is_instance_of::<PyFloat>() {
        return Ok(toml::Value::Float(value.extract().map_err(|e| e.to_string())?));
    }
    if value.is_instance_of::<PyString>() {
        return Ok(toml::Value::String(value.extract().map_err(|e| e.to_string())?));
    }
    if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in value.try_iter().map_err(|e| e.to_string())? {
            items.push(to_toml(&item.map_err(|e| e.to_string())?)?);
        }
        return Ok(toml::Value::Array(items));
    }
    if let Ok(dict) = value.downcast::<PyDict>() {
        let mut table = toml::Table::new();
        for (k, v) in dict.iter() {
            let k: String = k.extract().map_err(|_| "dictionary keys must be strings".to_owned())?;
            table.insert(k, to_toml(&v)?);
        }
        return Ok(toml::Value::Table(table));
    }
    // Numbers that are not Python's own (numpy, 0-d tensors) through `float`/`int`.
    if let Ok(f) = value.call_method0("__float__").and_then(|f| f.extract::<f64>()) {
        return Ok(toml::Value::Float(f));
    }
    Err(format!(
        "a value of type {} (expected bool, int, float, str, or a list or dict of them)",
        value.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    ))
}

/// Every component of `registry`: name, kind, description, accepted keys (comma-separated)
/// and library.
pub fn describe(registry: &Registry) -> Vec<HashMap<&'static str, String>> {
    registry
        .entries()
        .map(|e| {
            HashMap::from([
                ("name", e.info.name.to_string()),
                ("kind", e.info.kind.as_str().to_owned()),
                ("description", e.info.description.to_string()),
                ("keys", e.info.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")),
                ("library", registry.library(e).path.display().to_string()),
            ])
        })
        .collect()
}
