//! `sat-host eval`: clean and robust accuracy of a trained model, written to
//! `metrics.json` and `robust_curve.csv` beside any training figures already there.
use super::{prepare_from, print_summary, set, set_list, ConfigArgs, GlobalArgs};
use crate::config::{Override, RunConfig};
use crate::distributed::Ranks;
use crate::plugins::registry::Registry;
use crate::report::{Metrics, RunDir, RunLock, RunStatus};
use crate::train::{build_network, checkpoint::load_weights, load_datasets};
use anyhow::{bail, Context};
use clap::Args;
use sat_core::Epsilon;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `sat-host eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run directory: its config.toml and checkpoint.safetensors; results go there.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["checkpoint"])]
    pub run: Option<PathBuf>,
    /// The configuration and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Checkpoint to evaluate (with --config).
    #[arg(long, value_name = "FILE", requires = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Attack(s) to evaluate with (repeatable; replaces `[eval] attacks`).
    #[arg(long = "attack", value_name = "NAME")]
    pub attacks: Vec<String>,
    /// Budgets, comma-separated, e.g. `1/255,2/255,8/255` (replaces `[eval] epsilons`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = Epsilon::parse)]
    pub eps: Vec<Epsilon>,
    /// Where to write metrics.json and robust_curve.csv (default: the run directory or
    /// the checkpoint's directory).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// What to evaluate: config, checkpoint (none for a TorchScript model) and the default
/// output directory.
struct Target {
    config: ConfigArgs,
    checkpoint: Option<PathBuf>,
    out: Option<PathBuf>,
}

impl EvalArgs {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(match (&self.run, &self.checkpoint) {
            (Some(dir), _) => Target {
                config: ConfigArgs {
                    config: Some(dir.join("config.toml")),
                    sets: self.config.sets.clone(),
                },
                checkpoint: Some(dir.join("checkpoint.safetensors")),
                out: Some(dir.clone()),
            },
            (None, Some(ckpt)) => Target {
                config: self.config.clone(),
                checkpoint: Some(ckpt.clone()),
                out: Some(
                    ckpt.parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| PathBuf::from(".")),
                ),
            },
            (None, None) if self.config.config.is_some() => Target {
                config: self.config.clone(),
                checkpoint: None,
                out: None,
            },
            (None, None) => bail!(
                "eval needs --run DIR, --config FILE with --checkpoint FILE, or a --config whose [model] names a torchscript file"
            ),
        })
    }

    /// `--attack` and `--eps` as overrides.
    fn overrides(&self) -> Vec<Override> {
        let mut extra: Vec<Override> = set_list("eval.attacks", &self.attacks)
            .into_iter()
            .collect();
        if !self.eps.is_empty() {
            let list = self.eps.iter().map(|e| toml::Value::Float(e.0)).collect();
            extra.push(set("eval.epsilons", toml::Value::Array(list)));
        }
        extra
    }
}

/// A failure of a TorchScript model's evaluation names the model file (unless the
/// message does already, or it is an interruption).
fn name_model(e: anyhow::Error, config: &RunConfig) -> anyhow::Error {
    match &config.model.torchscript {
        Some(path)
            if !crate::interrupt::is_interrupted(&e)
                && !format!("{e:#}").contains(&path.display().to_string()) =>
        {
            e.context(format!("TorchScript model {}", path.display()))
        }
        _ => e,
    }
}

/// Evaluates and records the figures. A command that fails or is interrupted records
/// nothing and leaves no directory of its own behind (see [`OutClaim`]).
pub fn run(global: &GlobalArgs, args: &EvalArgs) -> anyhow::Result<ExitCode> {
    keep_freed_memory();
    let target = args.target()?;
    // Under torchrun or Slurm the test set is shared out over the ranks (figures equal to
    // one process's) and rank 0 writes.
    let launch = sat_distributed::Launch::from_env()?;
    if let Some(l) = &launch {
        crate::logging::set_rank(l.rank, l.world_size);
    }
    let (config, registry) = prepare_from(
        global,
        &target.config,
        &args.overrides(),
        args.run.is_some(),
    )?;
    let device = crate::distributed::device(&config, launch.as_ref())?;
    let ranks = Ranks::for_launch(launch.as_ref(), &config, device)?;
    if ranks.is_distributed() {
        crate::interrupt::stop_between_batches_only();
    }
    // The output directory first (rank 0): another writer of it is an error before any
    // work.
    let out = output_dir(args, target.out.clone(), &config);
    // Figures already there (a run directory's) are input too: checked before any work.
    let recorded = match out.file("metrics.json") {
        path if path.exists() && ranks.is_writer() => {
            let metrics = Metrics::read(&path)?;
            metrics
                .check_epochs(config.train.epochs)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some(metrics)
        }
        _ => None,
    };
    let claim = if ranks.is_writer() {
        check_out(args)?;
        Some(OutClaim::take(&out)?)
    } else {
        None
    };
    crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    // A second Ctrl-C ends the process at once: it takes the directory back too.
    let _abort = claim.as_ref().map(|c| {
        let made = c.made.clone();
        crate::interrupt::on_abort(move || OutClaim::remove_made(&made))
    });
    let evaluated =
        evaluate(&config, &registry, &target, device, &ranks).map_err(|e| name_model(e, &config));
    let evaluation = match evaluated {
        Ok(evaluation) => evaluation,
        Err(e) => {
            let interrupted = crate::interrupt::is_interrupted(&e);
            if let Some(claim) = claim {
                claim.give_back();
            }
            if !interrupted {
                return Err(e);
            }
            eprintln!(
                "evaluation {}; nothing recorded, {} is unchanged",
                crate::interrupt::or_interrupted(e),
                out.path.display()
            );
            return Ok(ExitCode::from(crate::interrupt::exit_code()));
        }
    };
    if !ranks.is_writer() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut metrics: Metrics = recorded.unwrap_or_else(|| Metrics {
        status: RunStatus::Evaluated,
        ..Default::default()
    });
    evaluation.record(&mut metrics);
    crate::interrupt::exclusive(|| out.write_metrics(&metrics))
        .with_context(|| format!("writing the results into {}", out.path.display()))?;
    print_summary(&metrics, &out.path);
    Ok(ExitCode::SUCCESS)
}

/// Makes glibc's allocator keep freed memory for reuse rather than hand it back to the
/// kernel (Linux with glibc; elsewhere nothing).
///
/// An attack allocates and frees tensors of the same large sizes at every step (a small
/// CNN's activations at batch 500 are 8–33 MB). glibc serves such blocks with fresh
/// `mmap`s (above its mmap threshold, at most 32 MiB) and returns the heap's top to the
/// kernel (above its trim threshold), so every step faulted in and zeroed them anew: over
/// 500 000 page faults and about a fifth of a PGD-10 evaluation's time on the CPU
/// (docs/PERFORMANCE.md, attack speed). Without `mmap` for large blocks and with a 1 GiB
/// trim threshold, freed blocks are reused; the process keeps its peak heap until it ends.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters, under the allocator's lock; any
    // value is valid for these two.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Loads the test set and the model of `target` and evaluates it as `config` says.
fn evaluate(
    config: &RunConfig,
    registry: &Registry,
    target: &Target,
    device: tch::Device,
    ranks: &Ranks,
) -> anyhow::Result<crate::eval::Evaluation> {
    let (_, test) = load_datasets(config)?;
    let mut net = build_network(config, test.num_classes(), device)?;
    match (&target.checkpoint, &config.model.torchscript) {
        (Some(_), Some(ts)) => bail!(
            "[model] torchscript = {} holds its own weights; evaluate it with --config alone, without a checkpoint",
            ts.display()
        ),
        (Some(checkpoint), None) => load_weights(&mut net.vs, checkpoint)?,
        (None, Some(ts)) => log::info!("evaluating TorchScript model {}", ts.display()),
        (None, None) => bail!(
            "eval --config without --checkpoint needs a [model] torchscript file; pass --checkpoint FILE"
        ),
    }
    crate::eval::evaluate(net.model.as_ref(), &test, config, registry, device, ranks)
}

/// The output directory, locked for this process, and the directories made for it
/// (none when it existed): what a failed or interrupted evaluation removes again, so
/// the same command can run once more.
struct OutClaim {
    _lock: RunLock,
    /// The directories created, the output directory first, then its new parents.
    made: Vec<PathBuf>,
}

impl OutClaim {
    /// Makes `out` (and its missing parents) and locks it.
    fn take(out: &RunDir) -> anyhow::Result<Self> {
        let mut made = Vec::new();
        let mut dir = out.path.as_path();
        while !dir.as_os_str().is_empty() && std::fs::symlink_metadata(dir).is_err() {
            made.push(dir.to_path_buf());
            dir = dir.parent().unwrap_or(Path::new(""));
        }
        std::fs::create_dir_all(&out.path)
            .with_context(|| format!("creating the output directory {}", out.path.display()))?;
        match out.lock() {
            Ok(lock) => Ok(Self { _lock: lock, made }),
            Err(e) => {
                Self::remove_made(&made);
                Err(e).with_context(|| format!("locking {}", out.path.display()))
            }
        }
    }

    /// Unlocks the directory and removes what [`OutClaim::take`] made, if it holds
    /// nothing but the lock file.
    fn give_back(self) {
        let Self { _lock: lock, made } = self;
        drop(lock);
        Self::remove_made(&made);
    }

    /// Removes `made` (output directory first) where it holds nothing but `.lock`.
    fn remove_made(made: &[PathBuf]) {
        let Some(out) = made.first() else {
            return;
        };
        let only_lock = std::fs::read_dir(out)
            .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK_FILE))
            .unwrap_or(false);
        if !only_lock {
            return;
        }
        let _ = std::fs::remove_file(out.join(LOCK_FILE));
        for dir in made {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// The run directory's lock file ([`RunDir::lock`]).
const LOCK_FILE: &str = ".lock";

/// Refuses an `--out` that is not a directory, or a directory with files in it (a lock
/// file left by a failed command does not count), unless it is the run directory being
/// evaluated: another model's results are never replaced.
fn check_out(args: &EvalArgs) -> anyhow::Result<()> {
    let Some(out) = &args.out else {
        return Ok(());
    };
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {}: it exists and is not a directory; results go to a new (or empty) directory",
            out.display()
        );
    }
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    if entries.flatten().all(|e| e.file_name() == LOCK_FILE) {
        return Ok(());
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if args.run.as_deref().is_some_and(|run| same(run, out)) {
        return Ok(());
    }
    bail!(
        "--out {}: the directory exists and is not empty; results go to a new (or empty) directory, or to the run being evaluated (--run DIR)",
        out.display()
    )
}

/// `--out`, else the run's or checkpoint's directory, else `<runs_dir>/<name>-eval`.
fn output_dir(args: &EvalArgs, default: Option<PathBuf>, config: &RunConfig) -> RunDir {
    RunDir {
        path: args
            .out
            .clone()
            .or(default)
            .unwrap_or_else(|| config.runs_dir.join(format!("{}-eval", config.name))),
    }
}
