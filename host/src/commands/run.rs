//! `sat-host run`: trains, checkpoints and evaluates a model into a run directory, or
//! continues an interrupted run with `--resume`.
use super::{prepare_from, print_summary, set, set_list, ConfigArgs, GlobalArgs};
use crate::config::Override;
use crate::report::{open_append_no_follow, write_atomic, RunDir};
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

/// Trains and evaluates; exit code 130 after Ctrl-C (SIGINT), 143 after SIGTERM.
pub fn run(global: &GlobalArgs, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let (config, registry) = prepare_from(
        global,
        &args.config_args()?,
        &args.overrides(),
        args.resume.is_some(),
    )?;
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
    let _lock = run_dir
        .lock()
        .with_context(|| format!("locking {}", run_dir.path.display()))?;
    write_atomic(&run_dir.file("config.toml"), config.to_toml().as_bytes())?;
    let log_file = open_append_no_follow(&run_dir.file("log.txt")).context("opening log.txt")?;
    crate::logging::tee_to(log_file);
    log::info!("run directory {}", run_dir.path.display());
    let interrupted =
        crate::interrupt::install().context("installing the SIGINT/SIGTERM handler")?;
    let (outcome, metrics) = train::run(
        &config,
        &registry,
        &run_dir,
        device,
        interrupted,
        args.resume.is_some(),
    )?;
    log::logger().flush();
    if outcome == Outcome::Interrupted {
        eprintln!(
            "interrupted by {}; results so far are in {} (continue with --resume {})",
            crate::interrupt::signal_name(),
            run_dir.path.display(),
            run_dir.path.display()
        );
        return Ok(ExitCode::from(crate::interrupt::exit_code()));
    }
    print_summary(&metrics, &run_dir.path);
    Ok(ExitCode::SUCCESS)
}
