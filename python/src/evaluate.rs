//! `sat.evaluate` (the CLI's evaluation on the caller's model and tensors) and `sat.run`
//! (`sat-host run` in this process).
use crate::errors;
use crate::model::PyModel;
use crate::plugins;
use crate::tensor;
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sat_host::commands::{Cli, Command};
use sat_host::config::Override;
use sat_host::distributed::Ranks;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Once;
use tch::Kind;

/// The host's logger, installed once per process (`SAT_LOG` sets the level).
fn logging(verbose: u8) {
    static INIT: Once = Once::new();
    INIT.call_once(|| sat_host::logging::init(verbose));
}

/// `key = value` as a configuration override.
fn set(key: &[&str], value: toml::Value) -> Override {
    Override {
        key: key.iter().map(|k| (*k).to_owned()).collect(),
        value,
        flag: None,
    }
}

/// Clean and robust accuracy of `model` on `images` and `labels` under every attack of
/// `attacks` at every budget of `epsilons`, exactly as `sat-host eval` measures them
/// (same batches, per-batch seeds and checks); `components` holds each attack's keys.
/// Returns the figures as JSON (the `metrics.json` fields).
#[pyfunction]
#[pyo3(signature = (model, images, labels, *, attacks, epsilons, batch_size = 256, max_samples = 0, seed = 0, components = None, class_names = None, plugin_dirs = Vec::new(), allow_insecure_plugins = false))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    py: Python<'_>,
    model: Py<PyAny>,
    images: &Bound<'_, PyAny>,
    labels: &Bound<'_, PyAny>,
    attacks: Vec<String>,
    epsilons: Vec<f64>,
    batch_size: usize,
    max_samples: usize,
    seed: u64,
    components: Option<&Bound<'_, PyDict>>,
    class_names: Option<Vec<String>>,
    plugin_dirs: Vec<PathBuf>,
    allow_insecure_plugins: bool,
) -> PyResult<String> {
    logging(0);
    let x = tensor::from_python(images, "images")?.detach();
    let y = tensor::from_python(labels, "labels")?;
    let size = x.size();
    if size.len() != 4 || x.kind() != Kind::Float || y.size() != [size[0]] || y.kind() != Kind::Int64 {
        return Err(errors::value(format!(
            "expected images float32 [N, C, H, W] and labels int64 [N], got {:?} {size:?} and {:?} {:?}",
            x.kind(),
            y.kind(),
            y.size()
        )));
    }
    let classes = match class_names {
        Some(names) => names,
        None => {
            let k = if size[0] == 0 { 0 } else { y.max().int64_value(&[]) + 1 };
            (0..k).map(|c| c.to_string()).collect()
        }
    };
    let mut overrides = vec![
        set(
            &["eval", "attacks"],
            toml::Value::Array(attacks.into_iter().map(toml::Value::String).collect()),
        ),
        set(
            &["eval", "epsilons"],
            toml::Value::Array(epsilons.into_iter().map(toml::Value::Float).collect()),
        ),
        set(&["eval", "batch_size"], toml::Value::Integer(batch_size as i64)),
        set(&["eval", "max_samples"], toml::Value::Integer(max_samples as i64)),
        set(&["seed"], toml::Value::Integer(seed as i64)),
        // The alignment is a gradient pass over the set that this call does not return.
        set(&["eval", "alignment"], toml::Value::Boolean(false)),
    ];
    if let Some(components) = components {
        for (name, table) in components.iter() {
            let name: String = name.extract()?;
            let table = plugins::to_toml(&table)
                .map_err(|m| errors::type_error(format!("components[{name:?}]: {m}")))?;
            overrides.push(Override {
                key: vec!["components".into(), name],
                value: table,
                flag: None,
            });
        }
    }
    let (config, source) = sat_host::config::load(None, &overrides).map_err(errors::value)?;
    let registry = plugins::registry(&plugin_dirs, allow_insecure_plugins)?;
    registry
        .check_component_tables(&config.components, &source, "components")
        .map_err(errors::value)?;
    // The set is held on the CPU, as the CLI holds it; each batch moves to the model's
    // device (the images' device).
    let device = x.device();
    let data = sat_data::Data::Memory(sat_data::Dataset {
        images: x.to_device(tch::Device::Cpu),
        labels: y.to_device(tch::Device::Cpu),
        boxes: None,
        masks: None,
        class_names: classes,
    });
    let model = PyModel::new(model);
    let model_ref = &model;
    let registry_ref = &*registry;
    let config_ref = &config;
    sat_host::interrupt::clear();
    let out = py.allow_threads(move || {
        sat_host::eval::evaluate(model_ref, &data, config_ref, registry_ref, device, &Ranks::single())
    });
    if let Some(e) = model.take_failure() {
        return Err(e);
    }
    let evaluation = out.map_err(|e| errors::chain(&e))?;
    let json = serde_json::json!({
        "clean_accuracy": evaluation.clean,
        "clean_per_class": evaluation.clean_per_class,
        "class_names": evaluation.class_names,
        "robust_accuracy": evaluation.robust,
    });
    Ok(json.to_string())
}

/// Runs `sat-host run --config CONFIG --set KEY=VALUE…` in this process and returns the
/// run directory. Ctrl-C stops the run as in the CLI (a second one ends the process).
#[pyfunction]
#[pyo3(signature = (config, overrides = None, *, plugin_dirs = Vec::new(), allow_insecure_plugins = false, verbose = 0))]
pub fn run(
    py: Python<'_>,
    config: PathBuf,
    overrides: Option<&Bound<'_, PyDict>>,
    plugin_dirs: Vec<PathBuf>,
    allow_insecure_plugins: bool,
    verbose: u8,
) -> PyResult<PathBuf> {
    use clap::Parser;
    logging(verbose);
    let mut argv: Vec<String> = vec!["sat-host".into()];
    for dir in plugins::command_line_dirs(&plugin_dirs) {
        argv.push("--plugin-dir".into());
        argv.push(dir.display().to_string());
    }
    if allow_insecure_plugins {
        argv.push("--allow-insecure-plugins".into());
    }
    argv.extend(["run".into(), "--config".into(), config.display().to_string()]);
    if let Some(overrides) = overrides {
        for (key, value) in overrides.iter() {
            let key: String = key.extract()?;
            let value = plugins::to_toml(&value)
                .map_err(|m| errors::type_error(format!("overrides[{key:?}]: {m}")))?;
            argv.push("--set".into());
            argv.push(format!("{key}={value}"));
        }
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| errors::value(e.to_string().trim_end()))?;
    let Command::Run(args) = &cli.command else {
        unreachable!("the argument list names `run`")
    };
    sat_host::interrupt::clear();
    let global = &cli.global;
    let out = py.allow_threads(move || sat_host::commands::run::run_into(global, args));
    let (code, dir) = out.map_err(|e| errors::chain(&e))?;
    let dir = dir.ok_or_else(|| errors::sat("the run made no run directory"))?;
    if code != ExitCode::SUCCESS {
        return Err(PyKeyboardInterrupt::new_err(format!(
            "the run was interrupted; results so far are in {} (continue with sat-host run --resume)",
            dir.display()
        )));
    }
    Ok(dir)
}
