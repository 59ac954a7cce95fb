//! `sat-host`: loads plugin libraries, trains and evaluates models with them.
// `#[sabi_trait]`-generated code from sat-core expands impls in anonymous consts.
#![allow(non_local_definitions)]

mod bench;
mod component;
mod config;
mod data;
mod device;
mod eval;
mod gallery;
mod logging;
mod optimizer;
mod oracle;
mod pipeline;
mod plot;
mod registry;
mod report;
mod schedule;
mod suggest;
mod train;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use config::{ConfigSource, Override, RunConfig};
use registry::{Registry, SearchPaths};
use sat_core::{ComponentKind, Epsilon};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Saliency-guided adversarial training on libtorch, with plugin saliency sources and attacks.
#[derive(Parser, Debug)]
#[command(name = "sat-host", version, about)]
struct Cli {
    /// Also load every plugin library in DIR (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,
    /// Load plugins even from world-writable directories.
    #[arg(long, global = true)]
    allow_insecure_plugins: bool,
    /// More log output (-v debug, -vv trace); SAT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the components of the loaded plugin libraries.
    Plugins {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<PluginsAction>,
    },
    /// Train (and then evaluate) a model.
    Run(RunArgs),
    /// Evaluate a trained model: clean and robust accuracy.
    Eval(EvalArgs),
    /// Write a PNG gallery of the maps of saliency sources (image, map, overlay,
    /// perturbed image) on test images.
    Saliency(SaliencyArgs),
    /// Measure training-step and evaluation throughput (images/s, peak memory) per
    /// training mode and model on generated 32×32 data.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Architectures, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "small-cnn,preact-resnet18"
    )]
    models: Vec<String>,
    /// Rows, comma-separated (default: all).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "standard,sat-masks,sat-gradient,fgsm-rs,pgd-7,trades-10,eval-pgd-20,eval-apgd-ce"
    )]
    rows: Vec<String>,
    /// Batch size.
    #[arg(long, default_value_t = 128)]
    batch: i64,
    /// Untimed steps per row.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps per row.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Write the rows as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SaliencyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Saliency source(s) to show (repeatable; default: `[train] saliency`).
    #[arg(long = "plugin", value_name = "NAME")]
    plugins: Vec<String>,
    /// Weights for the model the host answers oracle calls with (sources with
    /// `teacher = "self"`); default: the freshly initialised model.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Test images shown.
    #[arg(long, default_value_t = 6)]
    samples: i64,
    /// Budget of the perturbed-image column `clip(x − ε·S)`.
    #[arg(long, value_name = "EPS", default_value = "8/255", value_parser = Epsilon::parse)]
    eps: Epsilon,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum PluginsAction {
    /// Show one component: kind, version, library, default configuration.
    Describe {
        /// Component name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
struct ConfigArgs {
    /// The run configuration (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override a key of the configuration, e.g. `--set train.epochs=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::parse)]
    sets: Vec<Override>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Saliency source(s) for training (repeatable; replaces `[train] saliency`).
    #[arg(long = "plugin", value_name = "NAME")]
    plugins: Vec<String>,
    /// Attack that makes the training inputs (replaces `[train] attack`; `none` = standard).
    #[arg(long, value_name = "NAME")]
    attack: Option<String>,
    /// Continue an interrupted run in DIR from its last finished epoch, with its
    /// config.toml (`--set train.epochs=N` may extend it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "plugins", "attack"])]
    resume: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A run directory: its config.toml and checkpoint.safetensors; results go there.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["checkpoint"])]
    run: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Checkpoint to evaluate (with --config).
    #[arg(long, value_name = "FILE", requires = "config")]
    checkpoint: Option<PathBuf>,
    /// Attack(s) to evaluate with (repeatable; replaces `[eval] attacks`).
    #[arg(long = "attack", value_name = "NAME")]
    attacks: Vec<String>,
    /// Budgets, comma-separated, e.g. `1/255,2/255,8/255` (replaces `[eval] epsilons`).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = Epsilon::parse)]
    eps: Vec<Epsilon>,
    /// Where to write metrics.json and robust_curve.csv (default: the run directory or
    /// the checkpoint's directory).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            log::logger().flush();
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Plugins { json, action } => {
            let registry = load_registry(&cli, &[])?;
            match action {
                None => list_plugins(&registry, *json),
                Some(PluginsAction::Describe { name, json }) => {
                    describe_plugin(&registry, name, *json || cli_json(&cli))
                }
            }
        }
        Command::Run(args) => run(&cli, args),
        Command::Eval(args) => evaluate(&cli, args),
        Command::Saliency(args) => saliency_gallery(&cli, args),
        Command::Bench(args) => {
            let (config, registry) = prepare(&cli, &args.config, &[])?;
            let device = device::open(&config)?;
            let plan = bench::Plan {
                models: args.models.clone(),
                rows: args.rows.clone(),
                batch: args.batch,
                warmup: args.warmup,
                steps: args.steps.max(1),
            };
            log::info!(
                "bench on {device:?}, {} libtorch threads, batch {}",
                tch::get_num_threads(),
                plan.batch
            );
            let rows = bench::run(&config, &registry, &plan, device)?;
            if let Some(path) = &args.json {
                report::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())?;
            }
            print!("{}", bench::markdown(&rows));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--plugin NAME...` as the override of `[train] saliency` (none without names).
fn saliency_override(plugins: &[String]) -> Option<Override> {
    (!plugins.is_empty()).then(|| Override {
        key: vec!["train".into(), "saliency".into()],
        value: toml::Value::Array(plugins.iter().cloned().map(toml::Value::String).collect()),
    })
}

fn saliency_gallery(cli: &Cli, args: &SaliencyArgs) -> anyhow::Result<ExitCode> {
    let extra: Vec<Override> = saliency_override(&args.plugins).into_iter().collect();
    let (config, registry) = prepare(cli, &args.config, &extra)?;
    if config.train.saliency.is_empty() {
        bail!("no saliency source to show: pass --plugin NAME or set [train] saliency");
    }
    let device = device::open(&config)?;
    let (_, test) = train::load_datasets(&config)?;
    let mut net = train::build_network(&config, test.num_classes(), device)?;
    match &args.checkpoint {
        Some(c) => train::load_weights(&mut net.vs, c)?,
        None => {
            log::info!("no --checkpoint: sources with teacher = \"self\" see an untrained model")
        }
    }
    let files = gallery::write(
        &config,
        &registry,
        net.model.as_ref(),
        &test,
        &config.train.saliency,
        args.samples,
        args.eps.0,
        &args.out,
        device,
    )?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cli_json(cli: &Cli) -> bool {
    matches!(cli.command, Command::Plugins { json: true, .. })
}

fn load_registry(cli: &Cli, config_paths: &[PathBuf]) -> anyhow::Result<Registry> {
    let paths = SearchPaths::new(&cli.plugin_dirs, config_paths, cli.allow_insecure_plugins);
    let registry = Registry::discover(&paths)?;
    if registry.libraries.is_empty() {
        log::warn!("no plugin libraries found (looked next to the binary, in --plugin-dir, SAT_PLUGIN_PATH and [plugins] paths)");
    }
    Ok(registry)
}

fn list_plugins(registry: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let items: Vec<serde_json::Value> = registry
            .entries()
            .map(|e| {
                let lib = registry.library(e);
                serde_json::json!({
                    "name": e.info.name.as_str(),
                    "kind": e.info.kind.as_str(),
                    "version": e.info.version.as_str(),
                    "description": e.info.description.as_str(),
                    "library": lib.name,
                    "path": lib.path,
                    "default_config": e.info.default_config.as_str(),
                    "keys": e.info.keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        println!(
            "{:<22} {:<9} {:<8} {:<28} DESCRIPTION",
            "NAME", "KIND", "VERSION", "LIBRARY"
        );
        for e in registry.entries() {
            let lib = registry.library(e);
            println!(
                "{:<22} {:<9} {:<8} {:<28} {}",
                e.info.name,
                e.info.kind.as_str(),
                e.info.version,
                lib.name,
                e.info.description
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_plugin(registry: &Registry, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let entries: Vec<&registry::Entry> = registry.named(name).collect();
    if entries.is_empty() {
        let mut names: Vec<&str> = registry.entries().map(|e| e.info.name.as_str()).collect();
        names.dedup();
        bail!(
            "no component `{name}`{}; loaded components: {}",
            suggest::did_you_mean(name, names.iter().copied()),
            names.join(", ")
        );
    }
    let describe = |entry: &registry::Entry| {
        let lib = registry.library(entry);
        serde_json::json!({
            "name": name, "kind": entry.info.kind.as_str(), "version": entry.info.version.as_str(),
            "description": entry.info.description.as_str(), "library": lib.name, "path": lib.path,
            "default_config": entry.info.default_config.as_str(),
            "keys": entry.info.keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        })
    };
    if json {
        // One object for one component; a list when the name is used by several kinds.
        let value = match entries.as_slice() {
            [one] => describe(one),
            many => serde_json::Value::Array(many.iter().map(|e| describe(e)).collect()),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (i, entry) in entries.iter().enumerate() {
        let lib = registry.library(entry);
        if i > 0 {
            println!();
        }
        println!("name:        {name}");
        println!("kind:        {}", entry.info.kind);
        println!("version:     {}", entry.info.version);
        println!("library:     {} ({})", lib.name, lib.path.display());
        println!("description: {}", entry.info.description);
        println!("defaults ([components.{name}]):");
        for line in entry.info.default_config.lines() {
            println!("    {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the config and plugins, and checks every component the config names.
fn prepare(
    cli: &Cli,
    args: &ConfigArgs,
    extra: &[Override],
) -> anyhow::Result<(RunConfig, Registry)> {
    let mut sets = args.sets.clone();
    sets.extend(extra.iter().cloned());
    let (config, source) = config::load(args.config.as_deref(), &sets)?;
    let registry = load_registry(cli, &config.plugins.paths)?;
    check_names(&config, &source, &registry)?;
    Ok((config, registry))
}

fn check_names(
    config: &RunConfig,
    source: &ConfigSource,
    registry: &Registry,
) -> anyhow::Result<()> {
    registry.check_component_tables(&config.components, source, "components")?;
    registry.check_component_tables(&config.eval.components, source, "eval.components")?;
    let check = |name: &str, kind: ComponentKind, path: &[&str]| -> anyhow::Result<()> {
        registry
            .find(name, kind)
            .map(drop)
            .map_err(|e| source.error_at(path, e.to_string()).into())
    };
    for name in &config.train.saliency {
        check(name, ComponentKind::Saliency, &["train", "saliency"])?;
    }
    if !config.train.attack.is_empty() {
        check(
            &config.train.attack,
            ComponentKind::Attack,
            &["train", "attack"],
        )?;
    }
    for name in &config.eval.attacks {
        check(name, ComponentKind::Attack, &["eval", "attacks"])?;
    }
    Ok(())
}

fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut extra: Vec<Override> = saliency_override(&args.plugins).into_iter().collect();
    if let Some(attack) = &args.attack {
        let attack = if attack == "none" {
            String::new()
        } else {
            attack.clone()
        };
        extra.push(Override {
            key: vec!["train".into(), "attack".into()],
            value: toml::Value::String(attack),
        });
    }
    let config_args = match &args.resume {
        Some(dir) => {
            let file = dir.join("config.toml");
            if !file.exists() {
                bail!(
                    "--resume {}: no config.toml there; is it a run directory?",
                    dir.display()
                );
            }
            ConfigArgs {
                config: Some(file),
                sets: args.config.sets.clone(),
            }
        }
        None => args.config.clone(),
    };
    let (config, registry) = prepare(cli, &config_args, &extra)?;
    let device = device::open(&config)?;
    let run_dir = match &args.resume {
        Some(dir) => report::RunDir { path: dir.clone() },
        None => report::RunDir::create(&config.runs_dir, &config.name).with_context(|| {
            format!(
                "creating the run directory under {}",
                config.runs_dir.display()
            )
        })?,
    };
    report::write_atomic(&run_dir.file("config.toml"), config.to_toml().as_bytes())?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.file("log.txt"))
        .context("opening log.txt")?;
    logging::tee_to(log_file);
    log::info!("run directory {}", run_dir.path.display());

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;

    let (outcome, metrics) = train::run(
        &config,
        &registry,
        &run_dir,
        device,
        &interrupted,
        args.resume.is_some(),
    )?;
    log::logger().flush();
    if outcome == train::Outcome::Interrupted {
        eprintln!(
            "interrupted; results so far are in {}",
            run_dir.path.display()
        );
        return Ok(ExitCode::from(130));
    }
    print_summary(&metrics, &run_dir.path);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(metrics: &report::Metrics, dir: &Path) {
    println!("results in {}", dir.display());
    if let Some(clean) = metrics.clean_accuracy {
        println!("  clean accuracy        {clean:.4}");
    }
    if let Some(a) = metrics.alignment {
        println!("  alignment             {a:.4}");
    }
    for r in &metrics.robust_accuracy {
        println!(
            "  {:<8} {:<4} eps {:<7} {:.4}",
            r.attack,
            r.norm,
            Epsilon(r.epsilon).to_string(),
            r.accuracy
        );
    }
}

fn evaluate(cli: &Cli, args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let (config_args, checkpoint, default_out) = match (&args.run, &args.checkpoint) {
        (Some(dir), _) => (
            ConfigArgs {
                config: Some(dir.join("config.toml")),
                sets: args.config.sets.clone(),
            },
            Some(dir.join("checkpoint.safetensors")),
            Some(dir.clone()),
        ),
        (None, Some(ckpt)) => (
            args.config.clone(),
            Some(ckpt.clone()),
            Some(
                ckpt.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
            ),
        ),
        (None, None) if args.config.config.is_some() => (args.config.clone(), None, None),
        (None, None) => bail!(
            "eval needs --run DIR, --config FILE with --checkpoint FILE, or a --config whose [model] names a torchscript file"
        ),
    };
    let mut extra = Vec::new();
    if !args.attacks.is_empty() {
        let list = args
            .attacks
            .iter()
            .cloned()
            .map(toml::Value::String)
            .collect();
        extra.push(Override {
            key: vec!["eval".into(), "attacks".into()],
            value: toml::Value::Array(list),
        });
    }
    if !args.eps.is_empty() {
        let list = args.eps.iter().map(|e| toml::Value::Float(e.0)).collect();
        extra.push(Override {
            key: vec!["eval".into(), "epsilons".into()],
            value: toml::Value::Array(list),
        });
    }
    let (config, registry) = prepare(cli, &config_args, &extra)?;
    let device = device::open(&config)?;
    let (_, test) = train::load_datasets(&config)?;
    let mut net = train::build_network(&config, test.num_classes(), device)?;
    match (&checkpoint, &config.model.torchscript) {
        (Some(_), Some(ts)) => bail!(
            "[model] torchscript = {} holds its own weights; evaluate it with --config alone, without a checkpoint",
            ts.display()
        ),
        (Some(checkpoint), None) => train::load_weights(&mut net.vs, checkpoint)?,
        (None, Some(ts)) => log::info!("evaluating TorchScript model {}", ts.display()),
        (None, None) => bail!(
            "eval --config without --checkpoint needs a [model] torchscript file; pass --checkpoint FILE"
        ),
    }
    let evaluation = eval::evaluate(net.model.as_ref(), &test, &config, &registry, device)?;
    let out = report::RunDir {
        path: args
            .out
            .clone()
            .or(default_out)
            .unwrap_or_else(|| config.runs_dir.join(format!("{}-eval", config.name))),
    };
    std::fs::create_dir_all(&out.path)?;
    let mut metrics: report::Metrics = std::fs::read_to_string(out.file("metrics.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| report::Metrics {
            status: "evaluated".into(),
            ..Default::default()
        });
    metrics.clean_accuracy = Some(evaluation.clean);
    metrics.robust_accuracy = evaluation.robust;
    metrics.alignment = evaluation.alignment;
    out.write_metrics(&metrics)?;
    print_summary(&metrics, &out.path);
    Ok(ExitCode::SUCCESS)
}
