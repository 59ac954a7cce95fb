//! `sat-host export`: a trained run's model as a TorchScript file for PyTorch (images in
//! `[0, 1]` to logits, normalisation inside, evaluation mode), and a sidecar JSON saying
//! what it expects and where it came from.
use super::GlobalArgs;
use crate::config::RunConfig;
use crate::report::TempFile;
use crate::train::{build_network, checkpoint, load_datasets};
use anyhow::{bail, Context};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tch::{Device, Kind};

/// Largest difference allowed between the traced module's logits and the model's on
/// test images before the export is refused.
const TOLERANCE: f64 = 1e-4;

/// `sat-host export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run directory: its config.toml and checkpoint.safetensors.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// The TorchScript file to write; the sidecar JSON goes beside it, with the
    /// extension `.json` (model.pt → model.json).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace the output files if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Exports the run's model and prints the two files.
pub fn run(_global: &GlobalArgs, args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let sidecar = sidecar_path(&args.out)?;
    for file in [&args.out, &sidecar] {
        if !args.force && std::fs::symlink_metadata(file).is_ok() {
            bail!("{} exists; pass --force to replace it", file.display());
        }
        if file.is_dir() {
            bail!("{} is a directory; --out names a file", file.display());
        }
    }
    let config_file = args.run.join("config.toml");
    let ckpt = args.run.join(checkpoint::CHECKPOINT_FILE);
    if !config_file.is_file() {
        bail!(
            "{} has no config.toml: not a run directory",
            args.run.display()
        );
    }
    let (config, _) = crate::config::load(Some(&config_file), &[])?;
    if let Some(ts) = &config.model.torchscript {
        bail!(
            "the run's model is a TorchScript file already ({}): nothing to export",
            ts.display()
        );
    }
    if !ckpt.is_file() {
        bail!(
            "{} has no {}: the run finished no epoch, so there are no weights to export",
            args.run.display(),
            checkpoint::CHECKPOINT_FILE
        );
    }
    // Ctrl-C stops the data loading and the tracing; once the files are being written
    // (a second or so) they are finished, so none is left half-made.
    crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    let exported = match trace_run(&config, &ckpt).and_then(|e| {
        crate::interrupt::check()?;
        Ok(e)
    }) {
        Err(e) if crate::interrupt::is_interrupted(&e) => {
            eprintln!(
                "export {}; nothing written",
                crate::interrupt::or_interrupted(e)
            );
            return Ok(ExitCode::from(crate::interrupt::exit_code()));
        }
        other => other?,
    };
    let description = describe(&config, &args.run, &exported)?;
    crate::interrupt::exclusive(|| {
        write_both(&exported.module, &args.out, &description, &sidecar)
    })?;
    println!("{}", args.out.display());
    println!("{}", sidecar.display());
    Ok(ExitCode::SUCCESS)
}

/// `out` with the extension `.json`; refused when that is `out` itself.
fn sidecar_path(out: &Path) -> anyhow::Result<PathBuf> {
    let sidecar = out.with_extension("json");
    if sidecar == out {
        bail!(
            "--out {}: the TorchScript file cannot have the extension .json (the sidecar JSON takes that name); use e.g. model.pt",
            out.display()
        );
    }
    Ok(sidecar)
}

/// A traced model and what is recorded about it.
struct Exported {
    module: tch::CModule,
    class_names: Vec<String>,
    channels: i64,
    max_difference: f64,
}

/// Builds the run's model on the CPU (so the file loads anywhere), loads its weights,
/// traces it and checks the traced module against it on test images.
fn trace_run(config: &RunConfig, ckpt: &Path) -> anyhow::Result<Exported> {
    let device = Device::Cpu;
    let (_, test) = load_datasets(config)?;
    let mut net = build_network(config, test.num_classes(), device)?;
    checkpoint::load_weights(&mut net.vs, ckpt)?;
    // The tracer bakes the variables in as constants, which must not require a gradient.
    net.vs.freeze();
    // Every dataset sat reads is RGB.
    let channels = 3;
    let module =
        sat_models::export::trace(net.model.as_ref(), channels, config.data.image_size, device)
            .context("exporting the model to TorchScript")?;
    // At a batch size other than the traced one: a batch size baked into the graph
    // shows here.
    let n = test.len().clamp(1, 5);
    let index = tch::Tensor::arange(n, (Kind::Int64, Device::Cpu));
    let images = test.select(&index)?.images;
    let max_difference =
        sat_models::export::check_traced(&module, net.model.as_ref(), &images, TOLERANCE)
            .context("checking the exported model")?;
    Ok(Exported {
        module,
        class_names: test.class_names().to_vec(),
        channels,
        max_difference,
    })
}

/// The sidecar JSON: input, output, classes, normalisation, source run, sat version.
fn describe(
    config: &RunConfig,
    run: &Path,
    exported: &Exported,
) -> anyhow::Result<serde_json::Value> {
    let m = &config.model;
    let size = config.data.image_size;
    let normalisation = (!m.mean.is_empty() || !m.std.is_empty())
        .then(|| serde_json::json!({ "mean": m.mean, "std": m.std, "inside_model": true }));
    let source = run.canonicalize().unwrap_or_else(|_| run.to_path_buf());
    Ok(serde_json::json!({
        "format": "torchscript (traced, evaluation mode, weights as constants)",
        "input": {
            "shape": ["N", exported.channels, size, size],
            "dtype": "float32",
            "range": [0.0, 1.0],
        },
        "output": { "shape": ["N", exported.class_names.len()], "meaning": "logits" },
        "classes": exported.class_names.len(),
        "class_names": exported.class_names,
        "normalisation": normalisation,
        "model": { "arch": m.arch, "width": m.width },
        "dataset": config.data.dataset,
        "source_run": source,
        "checkpoint": source.join(checkpoint::CHECKPOINT_FILE),
        "traced_max_difference": exported.max_difference,
        "sat_version": env!("CARGO_PKG_VERSION"),
        "libtorch_version": sat_core::LIBTORCH_VERSION,
    }))
}

/// Writes the module and the sidecar into temporary files beside their targets, then
/// renames both into place: neither is ever seen half-written.
fn write_both(
    module: &tch::CModule,
    out: &Path,
    description: &serde_json::Value,
    sidecar: &Path,
) -> anyhow::Result<()> {
    let model_tmp = TempFile::beside(out)
        .with_context(|| format!("creating a temporary file for {}", out.display()))?;
    sat_models::export::save(module, &model_tmp.stable_path())
        .with_context(|| format!("writing {}", model_tmp.path.display()))?;
    let mut json_tmp = TempFile::beside(sidecar)
        .with_context(|| format!("creating a temporary file for {}", sidecar.display()))?;
    json_tmp
        .file
        .write_all(serde_json::to_string_pretty(description)?.as_bytes())
        .with_context(|| format!("writing {}", json_tmp.path.display()))?;
    model_tmp
        .persist(out)
        .with_context(|| format!("moving {} into place", out.display()))?;
    json_tmp
        .persist(sidecar)
        .with_context(|| format!("moving {} into place", sidecar.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_sits_beside_the_model_with_the_json_extension() {
        assert_eq!(
            sidecar_path(Path::new("out/model.pt")).unwrap(),
            Path::new("out/model.json")
        );
        assert_eq!(
            sidecar_path(Path::new("model")).unwrap(),
            Path::new("model.json")
        );
        let e = sidecar_path(Path::new("m.json")).unwrap_err().to_string();
        assert!(e.contains("extension .json"), "{e}");
    }
}
