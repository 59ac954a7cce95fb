//! `sat-host plugins`: the components of the loaded plugin libraries.
use super::{load_registry, GlobalArgs};
use crate::config::suggest::did_you_mean;
use crate::plugins::registry::{Entry, Registry};
use anyhow::bail;
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// `sat-host plugins [--json] [describe NAME]`.
#[derive(Args, Debug)]
pub struct PluginsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Show one component instead of the list.
    #[command(subcommand)]
    pub action: Option<PluginsAction>,
}

/// What to show instead of the list.
#[derive(Subcommand, Debug)]
pub enum PluginsAction {
    /// Show one component: kind, version, library, default configuration.
    Describe {
        /// Component name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Lists the components, or describes one.
pub fn run(global: &GlobalArgs, args: &PluginsArgs) -> anyhow::Result<ExitCode> {
    let registry = load_registry(global, &[])?;
    match &args.action {
        None => list(&registry, args.json),
        Some(PluginsAction::Describe { name, json }) => {
            describe(&registry, name, *json || args.json)
        }
    }
}

/// A component as JSON.
fn json(registry: &Registry, name: &str, e: &Entry) -> serde_json::Value {
    let lib = registry.library(e);
    serde_json::json!({
        "name": name,
        "kind": e.info.kind.as_str(),
        "version": e.info.version.as_str(),
        "description": e.info.description.as_str(),
        "library": lib.name,
        "path": lib.path,
        "default_config": e.info.default_config.as_str(),
        "keys": e.info.keys.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
    })
}

fn list(registry: &Registry, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        let items: Vec<serde_json::Value> = registry
            .entries()
            .map(|e| json(registry, e.info.name.as_str(), e))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}

fn describe(registry: &Registry, name: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let entries: Vec<&Entry> = registry.named(name).collect();
    if entries.is_empty() {
        let mut names: Vec<&str> = registry.entries().map(|e| e.info.name.as_str()).collect();
        names.dedup();
        bail!(
            "no component `{name}`{}; loaded components: {}",
            did_you_mean(name, names.iter().copied()),
            names.join(", ")
        );
    }
    if as_json {
        // One object for one component; a list where the name is used by several kinds
        // (the `trades` attack and objective).
        let value = match entries.as_slice() {
            [one] => json(registry, name, one),
            many => {
                serde_json::Value::Array(many.iter().map(|e| json(registry, name, e)).collect())
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let lib = registry.library(entry);
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
