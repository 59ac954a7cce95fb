//! What a run keeps on disk: the model's weights after each epoch (`checkpoint.safetensors`)
//! and the trainer's state (`state.safetensors`: weights, optimiser, loss scale and
//! finished epochs), each written atomically, so a killed run leaves the previous files
//! whole and `--resume` continues exactly.
use super::optimizer::{LossScale, Optimizer};
use crate::config::validate::MAX_EPOCHS;
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

/// Reads a safetensors file into a map, naming the file on failure. The file is opened
/// through `sat_input` (a regular file within the tensor-file cap) and libtorch reads
/// exactly that open file.
fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let input = sat_input::open(path, sat_input::Kind::Tensors)?;
    Ok(Tensor::read_safetensors(input.fd_path())
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), sat_models::torch_message(&e)))?
        .into_iter()
        .collect())
}

/// The one integer stored under `key`: a one-element integer tensor whose value lies in
/// `range`, else an error naming the key (the caller adds the file).
pub(crate) fn stored_integer(
    named: &HashMap<String, Tensor>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, String> {
    let t = named.get(key).ok_or_else(|| format!("has no `{key}`"))?;
    if t.numel() != 1 || t.kind() != tch::Kind::Int64 {
        return Err(format!(
            "`{key}` is a {:?} tensor of shape {:?}, not one int64",
            t.kind(),
            t.size()
        ));
    }
    let v = t.int64_value(&[0]);
    if !range.contains(&v) {
        return Err(format!(
            "`{key}` = {v} is outside [{}, {}]",
            range.start(),
            range.end()
        ));
    }
    Ok(v)
}

/// The most a loss scale grows to (2^64; float16 gradients overflow far below).
const MAX_LOSS_SCALE: f64 = 18_446_744_073_709_551_616.0;

/// The loss scale stored in a state file, if any (files written before mixed precision
/// have none): `amp.scale` one finite float64 in (0, 2^64], `amp.good_steps` in
/// [0, 2^32).
fn stored_loss_scale(named: &HashMap<String, Tensor>) -> Result<Option<LossScale>, String> {
    let Some(scale) = named.get("amp.scale") else {
        return Ok(None);
    };
    if scale.numel() != 1 || scale.kind() != tch::Kind::Double {
        return Err("`amp.scale` is not one float64".into());
    }
    let value = scale.double_value(&[0]);
    if !(value > 0.0 && value <= MAX_LOSS_SCALE) {
        return Err(format!("`amp.scale` = {value} is outside (0, 2^64]"));
    }
    let good = stored_integer(named, "amp.good_steps", 0..=i64::from(u32::MAX))?;
    Ok(Some(LossScale {
        scale: value,
        good_steps: good as u32,
    }))
}

/// Keys that are neither a variable of the model (`prefix` + name) nor among `others`:
/// the file was written for something else.
fn unexpected_key<'a>(
    named: &'a HashMap<String, Tensor>,
    variables: &HashMap<String, Tensor>,
    prefix: &str,
    others: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let mut keys: Vec<&String> = named.keys().collect();
    keys.sort();
    keys.into_iter()
        .find(|k| {
            let variable = k
                .strip_prefix(prefix)
                .is_some_and(|name| variables.contains_key(name));
            !variable && !others(k)
        })
        .map(String::as_str)
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
            if src.kind() != var.kind() {
                bail!(
                    "{}: `{key}` has dtype {:?}, the model's variable {:?}",
                    file.display(),
                    src.kind(),
                    var.kind()
                );
            }
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
    if let Some(key) = unexpected_key(&named, &vs.variables(), "", |_| false) {
        bail!(
            "{}: `{key}` is not a variable of this model: it was written for another model",
            path.display()
        );
    }
    copy_into(vs, &named, "", path)
}

/// The trainer's state after a finished epoch: model, optimiser and epoch, in one file
/// written atomically, so a resumed run continues exactly.
pub const STATE_FILE: &str = "state.safetensors";

/// The model's weights after the last finished epoch (what `eval --run` reads).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Where an interrupted epoch stopped, as a mid-epoch state file records it: the
/// batches it finished and their running sums, so `--resume` continues at the next
/// batch and reports the whole epoch's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WithinEpoch {
    /// Batches of the epoch finished (≥ 1).
    pub batches: u32,
    /// Sum of the per-sample training loss over them.
    pub loss: f64,
    /// Training inputs classified right.
    pub correct: i64,
    /// Training inputs seen.
    pub seen: i64,
    /// Wall time spent on them.
    pub seconds: f64,
    /// The epoch's batches in all: a resume whose config makes another number is
    /// refused (its order would differ).
    pub of: u32,
}

/// What a state file restores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Restored {
    /// Epochs finished.
    pub epochs_done: u32,
    /// The epoch after them, when it was interrupted part-way (a mid-epoch state).
    pub within: Option<WithinEpoch>,
}

/// The most batches an epoch may have in a state file (2³¹).
const MAX_BATCHES: i64 = 1 << 31;

/// Writes the state file (model, optimiser, loss scale, finished epochs and, for an
/// epoch interrupted part-way, `within`) atomically.
pub fn save_state(
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    scaler: &LossScale,
    epochs_done: u32,
    within: Option<&WithinEpoch>,
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
    if let Some(w) = within {
        named.push((
            "trainer.batches_done".into(),
            Tensor::from_slice(&[i64::from(w.batches)]),
        ));
        named.push((
            "trainer.partial".into(),
            Tensor::from_slice(&[
                w.loss,
                w.correct as f64,
                w.seen as f64,
                w.seconds,
                f64::from(w.of),
            ]),
        ));
    }
    write_tensors(&named, path)
}

/// A run directory's stored files refused on `--resume`: nothing was trained, so
/// nothing is written (the run keeps the status it had).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Whether `error` is a refusal of stored state ([`Refused`]).
pub fn is_refused(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<Refused>())
}

/// Restores model and optimiser from the state file, every field checked (see
/// [`Refused`]); returns the finished epochs and where an interrupted one stopped.
pub fn load_state(
    vs: &mut nn::VarStore,
    optimizer: &mut Optimizer,
    scaler: &mut LossScale,
    path: &Path,
) -> anyhow::Result<Restored> {
    restore_state(vs, optimizer, scaler, path).map_err(|e| Refused(format!("{e:#}")).into())
}

fn restore_state(
    vs: &mut nn::VarStore,
    optimizer: &mut Optimizer,
    scaler: &mut LossScale,
    path: &Path,
) -> anyhow::Result<Restored> {
    let named = read_tensors(path)?;
    let in_file = |e: String| anyhow::anyhow!("{}: {e}", path.display());
    let trainer = |k: &str| {
        k.starts_with("optimizer.")
            || matches!(
                k,
                "trainer.epochs_done"
                    | "trainer.batches_done"
                    | "trainer.partial"
                    | "amp.scale"
                    | "amp.good_steps"
            )
    };
    if let Some(key) = unexpected_key(&named, &vs.variables(), "model.", trainer) {
        return Err(in_file(format!(
            "`{key}` is neither a variable of this model nor trainer state: it was written for another model"
        )));
    }
    let within = stored_within(&named).map_err(in_file)?;
    // A mid-epoch state may come from epoch 1 (none finished); a whole one has ≥ 1.
    let fewest = if within.is_some() { 0 } else { 1 };
    let done = stored_integer(
        &named,
        "trainer.epochs_done",
        fewest..=i64::from(MAX_EPOCHS),
    )
    .map_err(in_file)?;
    let loss_scale = stored_loss_scale(&named).map_err(in_file)?;
    copy_into(vs, &named, "model.", path)?;
    optimizer.load_state(&named).map_err(in_file)?;
    if let Some(loss_scale) = loss_scale {
        *scaler = loss_scale;
    }
    Ok(Restored {
        epochs_done: done as u32,
        within,
    })
}

/// Where an interrupted epoch stopped, if the state file says: `trainer.batches_done`
/// in [1, 2³¹] and `trainer.partial` five finite float64 ≥ 0 (loss sum, correct, seen,
/// seconds, the epoch's batches), correct ≤ seen, counts whole, batches done < batches.
fn stored_within(named: &HashMap<String, Tensor>) -> Result<Option<WithinEpoch>, String> {
    if !named.contains_key("trainer.batches_done") && !named.contains_key("trainer.partial") {
        return Ok(None);
    }
    let batches = stored_integer(named, "trainer.batches_done", 1..=MAX_BATCHES)?;
    let partial = named
        .get("trainer.partial")
        .ok_or("has `trainer.batches_done` but no `trainer.partial`")?;
    if partial.size() != [5] || partial.kind() != tch::Kind::Double {
        return Err("`trainer.partial` is not five float64".into());
    }
    let v = Vec::<f64>::try_from(partial).map_err(|e| e.to_string())?;
    let whole = |x: f64| x.fract() == 0.0 && x < 9.0e15;
    let counts = whole(v[1]) && whole(v[2]) && whole(v[4]) && v[1] <= v[2];
    if v.iter().any(|x| !x.is_finite() || *x < 0.0) || !counts || v[4] <= batches as f64 {
        return Err(format!(
            "`trainer.partial` = {v:?} is not a loss sum, correct ≤ seen counts, seconds and more batches than `trainer.batches_done` = {batches}"
        ));
    }
    Ok(Some(WithinEpoch {
        batches: batches as u32,
        loss: v[0],
        correct: v[1] as i64,
        seen: v[2] as i64,
        seconds: v[3],
        of: v[4] as u32,
    }))
}

/// Cross-checks a state file's finished epochs against the run: at most `[train]
/// epochs`, and recorded in `metrics.json` (which is written before the state, so it has
/// `done` or, after a crash between the two writes, `done + 1` epochs).
pub fn check_resume(
    restored: &Restored,
    epochs: u32,
    recorded: usize,
    state: &Path,
) -> anyhow::Result<()> {
    let refuse = |m: String| Err(Refused(m).into());
    let done = restored.epochs_done;
    if restored.within.is_some() && done >= epochs {
        return refuse(format!(
            "{}: an interrupted epoch {} but [train] epochs = {epochs}",
            state.display(),
            done + 1
        ));
    }
    if done > epochs {
        return refuse(format!(
            "{}: `trainer.epochs_done` = {done} is more than [train] epochs = {epochs}",
            state.display()
        ));
    }
    let done = done as usize;
    if recorded < done || recorded > done + 1 {
        return refuse(format!(
            "{}: `trainer.epochs_done` = {done} but metrics.json records {recorded} epochs: the run directory's files do not belong together",
            state.display()
        ));
    }
    Ok(())
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
    save_state(
        vs,
        optimizer,
        scaler,
        epochs_done,
        None,
        &run.file(STATE_FILE),
    )
}
