//! The subcommands of `sat-host`, one module each, each owning its arguments; and what
//! they share: the global options, loading the configuration and the plugins, and the
//! exit code of an error.
pub mod attack;
pub mod bench;
pub mod compare;
pub mod data;
pub mod env;
pub mod eval;
pub mod export;
pub mod new;
pub mod plugins;
pub mod run;
pub mod saliency;

use crate::config::{self, ConfigSource, Override, RunConfig};
use crate::plugins::registry::{Registry, SearchPaths};
use crate::train::fault;
use clap::{Args, Parser, Subcommand};
use sat_core::ComponentKind;
use std::path::PathBuf;
use std::process::ExitCode;

/// Saliency-guided adversarial training on libtorch, with plugin saliency sources and attacks.
#[derive(Parser, Debug)]
#[command(name = "sat-host", version, about)]
pub struct Cli {
    /// Options of every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every subcommand.
#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Also load every plugin library in DIR (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// Load plugin libraries that fail the trust check (file or a directory on its way
    /// writable by others, or owned by another user), with a warning. The `[plugins]
    /// paths` of a run directory's config.toml (`eval --run`, `run --resume`) are never
    /// loaded on its authority: give those with --plugin-dir or SAT_PLUGIN_PATH.
    #[arg(long, global = true)]
    pub allow_insecure_plugins: bool,
    /// More log output (-v debug, -vv trace); SAT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the components of the loaded plugin libraries.
    Plugins(plugins::PluginsArgs),
    /// Train (and then evaluate) a model.
    Run(run::RunArgs),
    /// Evaluate a trained model: clean and robust accuracy.
    Eval(eval::EvalArgs),
    /// Write a PNG gallery of the maps of saliency sources (image, map, overlay,
    /// perturbed image) on test images.
    Saliency(saliency::SaliencyArgs),
    /// Measure training-step and evaluation throughput (images/s, peak memory) per
    /// training mode and model on generated 32×32 data, or on the configuration's
    /// dataset when it names one other than `shapes` (shards included).
    Bench(bench::BenchArgs),
    /// Write a plugin crate of its own (saliency source, attack or objective) that
    /// builds outside the sat tree against this sat-host's sat-core and libtorch.
    New(new::NewArgs),
    /// Print what a build outside the sat tree needs (LIBTORCH, versions, sat's source
    /// directory, the plugin directories searched) as shell assignments or JSON.
    Env(env::EnvArgs),
    /// One table of several run directories (method, clean and robust accuracy,
    /// alignment, training time, status) as Markdown, CSV or JSON; optionally an SVG
    /// overlaying their robust-accuracy curves.
    Compare(compare::CompareArgs),
    /// Write a trained run's model as a TorchScript file for PyTorch (images in [0, 1]
    /// to logits, normalisation inside) with a sidecar JSON.
    Export(export::ExportArgs),
    /// Run one attack at one budget on test images as eval does, and save the
    /// adversarial examples (safetensors) and optionally a PNG gallery.
    Attack(attack::AttackArgs),
    /// Pack datasets into tar shards, inspect them, and measure how fast they stream.
    Data(data::DataArgs),
}

/// The configuration file and its `--set` overrides.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The run configuration (TOML).
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a key of the configuration, e.g. `--set train.epochs=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Override::parse)]
    pub sets: Vec<Override>,
}

/// Runs the subcommand of `cli`.
pub fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Plugins(args) => plugins::run(&cli.global, args),
        Command::Run(args) => run::run(&cli.global, args),
        Command::Eval(args) => eval::run(&cli.global, args),
        Command::Saliency(args) => saliency::run(&cli.global, args),
        Command::Bench(args) => bench::run(&cli.global, args),
        Command::New(args) => new::run(&cli.global, args),
        Command::Env(args) => env::run(&cli.global, args),
        Command::Compare(args) => compare::run(&cli.global, args),
        Command::Export(args) => export::run(&cli.global, args),
        Command::Attack(args) => attack::run(&cli.global, args),
        Command::Data(args) => data::run(&cli.global, args),
    }
}

/// The exit code of a command that ended with `error`: 1, or
/// [`fault::PANIC_EXIT_CODE`] for a panic in the host.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if fault::is_panic(error) {
        ExitCode::from(fault::PANIC_EXIT_CODE)
    } else {
        ExitCode::FAILURE
    }
}

/// The flags that set a configuration key, by key: an error about the value names the
/// flag. A flag that becomes a config value through [`set`] or [`set_list`] has a row.
const FLAGS: [(&str, &str); 5] = [
    ("train.saliency", "--plugin"),
    ("train.attack", "--attack"),
    ("train.objective", "--objective"),
    ("eval.attacks", "--attack"),
    ("eval.epsilons", "--eps"),
];

/// The override `key = value` (`key` dotted) by its flag of [`FLAGS`].
fn set(key: &str, value: toml::Value) -> Override {
    match FLAGS.iter().find(|(k, _)| *k == key) {
        Some((_, flag)) => Override::from_flag(flag, key, value),
        None => Override {
            key: key.split('.').map(str::to_owned).collect(),
            value,
            flag: None,
        },
    }
}

/// The override `key = [names…]`, or none without names.
fn set_list(key: &str, names: &[String]) -> Option<Override> {
    let list = names.iter().cloned().map(toml::Value::String).collect();
    (!names.is_empty()).then(|| set(key, toml::Value::Array(list)))
}

/// Loads the libraries on the standard paths, `--plugin-dir`, `SAT_PLUGIN_PATH` and
/// `config_paths`.
fn load_registry(global: &GlobalArgs, config_paths: &[PathBuf]) -> anyhow::Result<Registry> {
    load_registry_from(global, config_paths, None)
}

/// As [`load_registry`]; with `recorded_in` (a run directory's config.toml), the
/// config's `[plugins] paths` are loaded only if also given with `--plugin-dir` or in
/// `SAT_PLUGIN_PATH`.
fn load_registry_from(
    global: &GlobalArgs,
    config_paths: &[PathBuf],
    recorded_in: Option<&std::path::Path>,
) -> anyhow::Result<Registry> {
    let mut paths = SearchPaths::new(
        &global.plugin_dirs,
        config_paths,
        global.allow_insecure_plugins,
    );
    paths.recorded_in = recorded_in.map(std::path::Path::to_path_buf);
    let registry = Registry::discover(&paths)?;
    if registry.libraries.is_empty() {
        log::warn!("no plugin libraries found (looked next to the binary, in --plugin-dir, SAT_PLUGIN_PATH and [plugins] paths)");
    }
    Ok(registry)
}

/// Loads the config (with `extra` overrides after the command line's) and the plugins,
/// and checks every component the config names.
fn prepare(
    global: &GlobalArgs,
    args: &ConfigArgs,
    extra: &[Override],
) -> anyhow::Result<(RunConfig, Registry)> {
    prepare_from(global, args, extra, false)
}

/// As [`prepare`]; with `recorded`, `args.config` is a run directory's config.toml
/// (`eval --run`, `run --resume`), whose plugin paths are not trusted blindly.
fn prepare_from(
    global: &GlobalArgs,
    args: &ConfigArgs,
    extra: &[Override],
    recorded: bool,
) -> anyhow::Result<(RunConfig, Registry)> {
    let mut sets = args.sets.clone();
    sets.extend(extra.iter().cloned());
    let (config, source) = config::load(args.config.as_deref(), &sets)?;
    let recorded_in = args.config.as_deref().filter(|_| recorded);
    let registry = load_registry_from(global, &config.plugins.paths, recorded_in)?;
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
    check(
        &config.train.objective,
        ComponentKind::Objective,
        &["train", "objective"],
    )?;
    for name in &config.eval.attacks {
        check(name, ComponentKind::Attack, &["eval", "attacks"])?;
    }
    Ok(())
}

/// Prints the evaluation figures of `metrics` and where they are: per attack and budget
/// the robust accuracy, the worst class, and where recorded the targeted success rate
/// and the median perturbation norms.
fn print_summary(metrics: &crate::report::Metrics, dir: &std::path::Path) {
    println!("results in {}", dir.display());
    if let Some(clean) = metrics.clean_accuracy {
        println!("  clean accuracy        {clean:.4}");
    }
    if let Some(a) = metrics.alignment {
        println!("  alignment             {a:.4}");
    }
    for r in &metrics.robust_accuracy {
        println!(
            "  {:<8} {:<4} eps {:<7} {:.4}{}",
            r.attack,
            r.norm,
            sat_core::Epsilon(r.epsilon).shown(&r.norm),
            r.accuracy,
            breakdown(r, &metrics.class_names)
        );
    }
}

/// The summary's tail for one robust figure: `  worst class NAME 0.1234`, then the
/// targeted success and the median norms where recorded (empty for old metrics).
fn breakdown(r: &crate::report::RobustAccuracy, class_names: &[String]) -> String {
    let mut text = String::new();
    if let Some((class, accuracy)) = r.worst_class() {
        let name = class_names
            .get(class)
            .cloned()
            .unwrap_or_else(|| format!("class {class}"));
        text += &format!("  worst class {name} {accuracy:.4}");
    }
    if let Some(t) = r.targeted {
        text += &format!(
            "  targeted success {:.4} ({}/{})",
            t.rate, t.successes, t.evaluated
        );
    }
    if let (Some(l2), Some(linf)) = (r.median_l2, r.median_linf) {
        text += &format!(
            "  median norm of the {} fooled l2 {l2:.4} linf {linf:.4}",
            r.fooled
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_that_sets_a_key_is_a_flag_of_a_subcommand() {
        let cli = Cli::command();
        for (key, flag) in FLAGS {
            let long = flag.trim_start_matches("--");
            let found = cli
                .get_subcommands()
                .any(|c| c.get_arguments().any(|a| a.get_long() == Some(long)));
            assert!(found, "{flag} (for {key}) is no subcommand's flag");
            assert_eq!(set(key, toml::Value::Boolean(true)).place(), flag);
        }
        assert_eq!(
            set("train.epochs", toml::Value::Integer(1)).place(),
            "--set train.epochs"
        );
    }
}
