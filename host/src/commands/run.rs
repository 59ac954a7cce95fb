//! `sat-host run`: trains, checkpoints and evaluates a model into a run directory, or
//! continues an interrupted run with `--resume`.
use super::{prepare, print_summary, set, set_list, ConfigArgs, GlobalArgs};
use crate::config::Override;
use crate::report::{write_atomic, RunDir};
use crate::train::{self, Outcome};
use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
            extra.push(set("train.objective", toml::Value::String(objective.clone())));
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

/// Trains and evaluates; exit code 130 after Ctrl-C.
pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (config, registry) = prepare(global, &args.config_args()?, &args.overrides())?;
    let device = crate::device::open(&config)?;
    let run_dir = match &args.resume {
        Some(dir) => RunDir { path: dir.clone() },
        None => RunDir::create(&config.runs_dir, &config.name).with_context(|| {
            format!(
                "creating the run directory under {}",
                config.runs_dir.display()
            )
        })?,
    };
    write_atomic(&run_dir.file("config.toml"), config.to_toml().as_bytes())?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.file("log.txt"))
        .context("opening log.txt")?;
    crate::logging::tee_to(log_file);
    log::info!("run directory {}", run_dir.path.display());
    let interrupted = ctrl_c_flag()?;
    let (outcome, metrics) = train::run(
        &config,
        &registry,
        &run_dir,
        device,
        &interrupted,
        args.resume.is_some(),
    )?;
    log::logger().flush();
    if outcome == Outcome::Interrupted {
        eprintln!(
            "interrupted; results so far are in {}",
            run_dir.path.display()
        );
        return Ok(ExitCode::from(130));
    }
    print_summary(&metrics, &run_dir.path);
    Ok(ExitCode::SUCCESS)
}

/// A flag the first Ctrl-C sets (training stops after the current step); a second one
/// exits at once with 130.
fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(interrupted)
}
