//! `sat-host run`: trains, checkpoints and evaluates a model into a run directory, or
//! continues an interrupted run with `--resume`.
use super::{prepare_from, print_summary, set, set_list, ConfigArgs, GlobalArgs};
use crate::config::Override;
use crate::config::RunConfig;
use crate::distributed::{self, Ranks};
use crate::report::{open_append_no_follow, write_atomic, Metrics, RunDir, RunLock, RunStatus};
use crate::train::{self, Outcome};
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// `sat-host run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The configuration and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Saliency source(s) for training (repeatable; replaces `[train] saliency`).
    #[arg(long = "plugin", value_name = "NAME")]
    pub plugins: Vec<String>,
    /// Attack that makes the training inputs (replaces `[train] attack`; `none` = standard).
    #[arg(long, value_name = "NAME")]
    pub attack: Option<String>,
    /// Training objective (replaces `[train] objective`; default `ce`).
    #[arg(long, value_name = "NAME")]
    pub objective: Option<String>,
    /// Continue an interrupted run in DIR from its last finished epoch, with its
    /// config.toml (`--set train.epochs=N` may extend it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "plugins", "attack", "objective"])]
    pub resume: Option<PathBuf>,
}

impl RunArgs {
    /// `--plugin`, `--attack` and `--objective` as overrides.
    fn overrides(&self) -> Vec<Override> {
        let mut extra: Vec<Override> = set_list("train.saliency", &self.plugins)
            .into_iter()
            .collect();
        if let Some(attack) = &self.attack {
            let attack = if attack == "none" {
                ""
            } else {
                attack.as_str()
            };
            extra.push(set("train.attack", toml::Value::String(attack.into())));
        }
        if let Some(objective) = &self.objective {
            extra.push(set(
                "train.objective",
                toml::Value::String(objective.clone()),
            ));
        }
        extra
    }

    /// The config file and overrides: the run directory's with `--resume`.
    fn config_args(&self) -> anyhow::Result<ConfigArgs> {
        let Some(dir) = &self.resume else {
            return Ok(self.config.clone());
        };
        let file = dir.join("config.toml");
        if !file.exists() {
            bail!(
                "--resume {}: no config.toml there; is it a run directory?",
                dir.display()
            );
        }
        Ok(ConfigArgs {
            config: Some(file),
            sets: self.config.sets.clone(),
        })
    }
}

/// Trains and evaluates; exit code 130 after Ctrl-C (SIGINT), 143 after SIGTERM.
///
/// Launched by torchrun or Slurm (see [`crate::distributed`]) every rank runs this: the
/// ranks join the process group and check that their configs agree, rank 0 makes (or
/// resumes) the run directory and shares its path, and only rank 0 writes into it; the
/// other ranks append their warnings and errors to its `log.txt`. When torchrun restarts
/// the workers (`--max-restarts`, `TORCHELASTIC_RESTART_COUNT` > 0), rank 0 resumes the
/// run directory this torchrun job made, if it holds a finished epoch.
pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    run_into(global, args).map(|(code, _)| code)
}

/// [`run`], also returning the run directory (on rank 0; `None` on the other ranks):
/// what `sat.run` in Python reads the metrics from.
pub fn run_into(
    global: &GlobalArgs,
    args: &RunArgs,
) -> anyhow::Result<(ExitCode, Option<PathBuf>)> {
    let launch = sat_distributed::Launch::from_env()?;
    if let Some(l) = &launch {
        crate::logging::set_rank(l.rank, l.world_size);
    }
    let (config, registry) = prepare_from(
        global,
        &args.config_args()?,
        &args.overrides(),
        args.resume.is_some(),
    )?;
    let device = distributed::device(&config, launch.as_ref())?;
    let ranks = Ranks::for_launch(launch.as_ref(), &config, device)?;
    let identity = launch.as_ref().and_then(distributed::elastic_identity);
    let (elastic, elastic_note) = match (&args.resume, &identity) {
        (None, Some(id)) if ranks.is_writer() => elastic_resume(&config, id),
        _ => (None, None),
    };
    let resume = args.resume.clone().or(elastic);
    // From here (after joining the ranks) Ctrl-C stops the run cleanly; before, while it
    // may wait for the other ranks, it ends the process as usual.
    if ranks.is_distributed() {
        crate::interrupt::stop_between_batches_only();
    }
    let interrupted =
        crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    // Every rank learns whether rank 0 resumes (a torchrun restart is rank 0's finding).
    let resuming = ranks.sum(
        &[f64::from(u8::from(resume.is_some() && ranks.is_writer()))],
        device,
    )?[0]
        > 0.0;
    // Rank 0 holds the run directory's lock for the whole run (`_lock`).
    let (run_dir, _lock) = join_run_dir(
        &config,
        &ranks,
        resume.as_deref(),
        identity.as_deref(),
        elastic_note,
    )?;
    // A second Ctrl-C ends the process at once, recording the interruption first.
    let _abort = ranks.is_writer().then(|| {
        let run = run_dir.clone();
        crate::interrupt::on_abort(move || mark_interrupted(&run))
    });
    let result = train::run(
        &config,
        &registry,
        &run_dir,
        device,
        interrupted,
        resuming,
        &ranks,
    );
    if !ranks.is_writer() {
        settle_for_a_dead_writer(&run_dir, ranks.rank(), &result);
    }
    let (outcome, metrics) = result?;
    log::logger().flush();
    Ok(conclude(outcome, &metrics, &ranks, run_dir))
}

/// The run directory: rank 0 opens it (or the one it resumes), holds its lock and tells
/// the other ranks its path; they join it and copy their warnings to its log.
fn join_run_dir(
    config: &RunConfig,
    ranks: &Ranks,
    resume: Option<&std::path::Path>,
    identity: Option<&str>,
    elastic_note: Option<String>,
) -> anyhow::Result<(RunDir, Option<RunLock>)> {
    let (run_dir, lock) = if ranks.is_writer() {
        let (run_dir, lock) = open_run_dir(config, resume, identity)?;
        if let Some(note) = elastic_note {
            log::warn!("{note}");
        }
        ranks.share_path("run_dir", Some(run_dir.path.clone()))?;
        (run_dir, Some(lock))
    } else {
        let run_dir = RunDir {
            path: ranks.share_path("run_dir", None)?,
        };
        // Where the run directory is on a shared file system, this rank's warnings and
        // errors go to its log.txt too (appended, one line at a time).
        if let Ok(f) = open_append_no_follow(&run_dir.file("log.txt")) {
            crate::logging::tee_to(f);
        }
        (run_dir, None)
    };
    log::info!("run directory {}", run_dir.path.display());
    Ok((run_dir, lock))
}

/// The exit code of a finished run and, on rank 0, its directory, after printing the
/// summary or, when interrupted, how to continue.
fn conclude(
    outcome: Outcome,
    metrics: &Metrics,
    ranks: &Ranks,
    run_dir: RunDir,
) -> (ExitCode, Option<PathBuf>) {
    let code = if outcome == Outcome::Interrupted {
        ExitCode::from(crate::interrupt::exit_code())
    } else {
        ExitCode::SUCCESS
    };
    if !ranks.is_writer() {
        return (code, None);
    }
    if outcome == Outcome::Interrupted {
        eprintln!(
            "interrupted by {}; results so far are in {} (continue with --resume {})",
            crate::interrupt::signal_name(),
            run_dir.path.display(),
            run_dir.path.display()
        );
    } else {
        print_summary(metrics, &run_dir.path);
    }
    (code, Some(run_dir.path))
}

/// On a rank other than 0 that stops early (an error: a collective with a dead rank 0;
/// or a signal: torchrun stopping the job after rank 0 died), the run is recorded as
/// `failed` if rank 0 is gone without recording an outcome: its lock is free (taken
/// within 3 s) and `metrics.json` still says `running`. A live rank 0 holds the lock and
/// records the outcome itself.
fn settle_for_a_dead_writer(
    run_dir: &RunDir,
    rank: usize,
    result: &anyhow::Result<(Outcome, Metrics)>,
) {
    let seen = match result {
        Ok((Outcome::Completed, _)) => return,
        Ok((Outcome::Interrupted, _)) => "was interrupted".to_string(),
        Err(e) => format!("failed: {e:#}"),
    };
    let reason = format!("rank 0 is gone; rank {rank} {seen}");
    if let Err(e) = run_dir.settle_if_abandoned(&reason, std::time::Duration::from_secs(3)) {
        log::error!(
            "cannot record the dead rank 0 in {}: {e:#}",
            run_dir.path.display()
        );
    }
}

/// After a torchrun restart (`TORCHELASTIC_RESTART_COUNT` > 0), the run directory this
/// job (`identity`) made, if it holds a finished epoch, and the note to log.
fn elastic_resume(config: &RunConfig, identity: &str) -> (Option<PathBuf>, Option<String>) {
    let Some(restart) = distributed::elastic_restart() else {
        return (None, None);
    };
    let found = distributed::find_elastic_run(&config.runs_dir, &config.name, identity);
    let note = match &found {
        Some(dir) => format!(
            "torchrun restart {restart}: resuming {} from its last finished epoch",
            dir.display()
        ),
        None => format!(
            "torchrun restart {restart}: no finished epoch of this job under {}; starting afresh",
            config.runs_dir.display()
        ),
    };
    (found, Some(note))
}

/// What a second Ctrl-C records before the process ends: `metrics.json` says
/// `interrupted` where it said `running`, or is written so where there was none yet
/// (epoch 1). A finished status (completed, failed) stays.
fn mark_interrupted(run: &RunDir) {
    let file = run.file("metrics.json");
    let mut metrics = match std::fs::read_to_string(&file) {
        Ok(text) => match serde_json::from_str::<Metrics>(&text) {
            Ok(metrics) => metrics,
            Err(e) => return log::error!("{}: {e}; the status is not recorded", file.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Metrics::default(),
        Err(e) => return log::error!("{}: {e}; the status is not recorded", file.display()),
    };
    if metrics.status != RunStatus::Running {
        return;
    }
    metrics.status = RunStatus::Interrupted;
    match run.write_metrics(&metrics) {
        Ok(()) => log::warn!("recorded the run as interrupted in {}", file.display()),
        Err(e) => log::error!("cannot record the interruption in {}: {e}", file.display()),
    }
}

/// Rank 0's run directory, new or resumed, locked, with its `config.toml` (a resumed
/// run's once the resume is accepted: see the training session), launch identity and
/// `log.txt` (which the log now also goes to).
fn open_run_dir(
    config: &RunConfig,
    resume: Option<&std::path::Path>,
    identity: Option<&str>,
) -> anyhow::Result<(RunDir, RunLock)> {
    let run_dir = match resume {
        Some(dir) => RunDir {
            path: dir.to_path_buf(),
        },
        None => RunDir::create(&config.runs_dir, &config.name).with_context(|| {
            format!(
                "creating the run directory under {}",
                config.runs_dir.display()
            )
        })?,
    };
    let lock = run_dir
        .lock()
        .with_context(|| format!("locking {}", run_dir.path.display()))?;
    if resume.is_some() {
        // A run whose writer died says `running`: record that before continuing it.
        run_dir.settle_abandoned(&lock, "found by run --resume")?;
    }
    if resume.is_none() {
        write_atomic(&run_dir.file("config.toml"), config.to_toml().as_bytes())?;
    }
    if let Some(id) = identity {
        write_atomic(&run_dir.file(distributed::LAUNCH_FILE), id.as_bytes())?;
    }
    let log_file = open_append_no_follow(&run_dir.file("log.txt")).context("opening log.txt")?;
    crate::logging::tee_to(log_file);
    Ok((run_dir, lock))
}
