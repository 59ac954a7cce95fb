//! What a run keeps on disk: the model's weights after each epoch (`checkpoint.safetensors`)
//! and the trainer's state (`state.safetensors`: weights, optimiser, loss scale and
//! finished epochs), each written atomically, so a killed run leaves the previous files
//! whole and `--resume` continues exactly.
use super::optimizer::{LossScale, Optimizer};
use crate::report::{Metrics, RunDir, TempFile};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// Writes named tensors to `path` atomically (safetensors): into a fresh temporary file
/// made with `O_EXCL` (never through a link; tch writes it through its
/// `/proc/self/fd` path), then renamed; on any error the temporary file is removed.
fn write_tensors(named: &[(String, Tensor)], path: &Path) -> anyhow::Result<()> {
    let tmp = TempFile::beside(path)
        .with_context(|| format!("creating a temporary file for {}", path.display()))?;
    let cpu: Vec<(String, Tensor)> = named
        .iter()
        .map(|(k, t)| (k.clone(), t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&cpu, tmp.stable_path())
        .with_context(|| format!("writing {}", tmp.path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("moving {} into place", path.display()))
}

fn model_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Saves the model's variables to `path` atomically (safetensors).
pub fn save_checkpoint(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    write_tensors(&model_tensors(vs), path)
}

/// Reads a safetensors file into a map, naming the file on failure.
fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// Copies the tensors of `named` (keys `prefix` + variable name) into `vs`; every
/// variable must be present with its shape.
fn copy_into(
    vs: &mut nn::VarStore,
    named: &HashMap<String, Tensor>,
    prefix: &str,
    file: &Path,
) -> anyhow::Result<()> {
    let variables = vs.variables();
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, var) in &variables {
            let key = format!("{prefix}{name}");
            let src = named.get(&key).with_context(|| {
                format!(
                    "{} has no tensor `{key}`: it was written for another model",
                    file.display()
                )
            })?;
            if src.size() != var.size() {
                bail!(
                    "{}: `{key}` has shape {:?}, the model's variable {:?} (another [model] arch or width?)",
                    file.display(),
                    src.size(),
                    var.size()
                );
            }
            if src.is_floating_point() && !sat_models::finite(src) {
                bail!(
                    "{}: `{key}` holds NaN or infinite values; refusing to load these weights",
                    file.display()
                );
            }
            var.shallow_clone().copy_(src);
        }
        Ok(())
    })
}

/// Loads model weights written by [`save_checkpoint`] into `vs`.
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let named = read_tensors(path)?;
    copy_into(vs, &named, "", path)
}

/// The trainer's state after a finished epoch: model, optimiser and epoch, in one file
/// written atomically, so a resumed run continues exactly.
pub const STATE_FILE: &str = "state.safetensors";

/// The model's weights after the last finished epoch (what `eval --run` reads).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Writes the state file (model, optimiser, loss scale, finished epochs) atomically.
pub fn save_state(
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    scaler: &LossScale,
    epochs_done: u32,
    path: &Path,
) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> = model_tensors(vs)
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    named.extend(optimizer.state());
    named.push((
        "trainer.epochs_done".into(),
        Tensor::from_slice(&[epochs_done as i64]),
    ));
    named.push(("amp.scale".into(), Tensor::from_slice(&[scaler.scale])));
    named.push((
        "amp.good_steps".into(),
        Tensor::from_slice(&[scaler.good_steps as i64]),
    ));
    write_tensors(&named, path)
}

/// Restores model and optimiser from the state file; returns the finished epochs.
pub fn load_state(
    vs: &mut nn::VarStore,
    optimizer: &mut Optimizer,
    scaler: &mut LossScale,
    path: &Path,
) -> anyhow::Result<u32> {
    let named = read_tensors(path)?;
    copy_into(vs, &named, "model.", path)?;
    optimizer
        .load_state(&named)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let (Some(scale), Some(good)) = (named.get("amp.scale"), named.get("amp.good_steps")) {
        scaler.scale = scale.double_value(&[0]);
        scaler.good_steps = good.int64_value(&[0]) as u32;
    }
    let done = named
        .get("trainer.epochs_done")
        .with_context(|| format!("{} has no epoch count", path.display()))?;
    Ok(done.int64_value(&[0]) as u32)
}

/// Records a finished epoch: the weights, then `metrics` (with the epoch's figures), then
/// the state after `epochs_done` epochs. Metrics before state: a crash in between makes
/// `--resume` redo this epoch, and the resumed run drops its figures before recording
/// them again.
pub fn save_epoch(
    run: &RunDir,
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    scaler: &LossScale,
    epochs_done: u32,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    save_checkpoint(vs, &run.file(CHECKPOINT_FILE))?;
    run.write_metrics(metrics)?;
    save_state(vs, optimizer, scaler, epochs_done, &run.file(STATE_FILE))
}
