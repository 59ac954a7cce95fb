//! `sat-host env`: what a build outside the sat tree needs to match this `sat-host` —
//! the libtorch it links, the libtorch, tch and `sat-core` versions, the sat checkout it
//! was built from and the directories it searches for plugins — as shell assignments
//! or JSON.
use super::GlobalArgs;
use crate::plugins::registry::SearchPaths;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The sat checkout this binary was built from (recorded by `host/build.rs`).
pub const SOURCE_DIR: &str = env!("SAT_SOURCE_DIR");
/// `LIBTORCH` as tch's build saw it: the libtorch this binary links (its rpath).
pub const LIBTORCH: &str = env!("SAT_LIBTORCH");
/// `LIBTORCH_CXX11_ABI` as tch's build saw it (empty when unset).
pub const LIBTORCH_CXX11_ABI: &str = env!("SAT_LIBTORCH_CXX11_ABI");
/// Whether that libtorch has CUDA (`1` or `0`, from `sat-plugin-build`).
pub const LIBTORCH_CUDA: &str = env!("SAT_LIBTORCH_CUDA");

/// `sat-host env [--json] [--export]`.
#[derive(Args, Debug)]
pub struct EnvArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Prefix each assignment with `export ` (for `eval "$(sat-host env --export)"`).
    #[arg(long, conflicts_with = "json")]
    pub export: bool,
}

/// The facts `env` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildEnv {
    /// `LIBTORCH`.
    pub libtorch: String,
    /// `LIBTORCH_CXX11_ABI` (`None` when tch's build had it unset).
    pub cxx11_abi: Option<String>,
    /// libtorch's version.
    pub libtorch_version: String,
    /// Whether libtorch has CUDA.
    pub libtorch_cuda: bool,
    /// tch's version.
    pub tch_version: String,
    /// `sat-core`'s version.
    pub sat_core_version: String,
    /// The sat checkout this binary was built from.
    pub source_dir: PathBuf,
    /// The directories and files searched for plugin libraries, in order, made absolute:
    /// next to the binary (`libsat_plugin_*` only), `--plugin-dir`, `SAT_PLUGIN_PATH`.
    pub plugin_dirs: Vec<PathBuf>,
}

impl BuildEnv {
    /// The facts of this binary, with the plugin directories `global` adds.
    pub fn of(global: &GlobalArgs) -> Self {
        let paths = SearchPaths::new(&global.plugin_dirs, &[], global.allow_insecure_plugins);
        Self {
            libtorch: LIBTORCH.to_owned(),
            cxx11_abi: (!LIBTORCH_CXX11_ABI.is_empty()).then(|| LIBTORCH_CXX11_ABI.to_owned()),
            libtorch_version: sat_core::LIBTORCH_VERSION.to_owned(),
            libtorch_cuda: LIBTORCH_CUDA == "1",
            tch_version: sat_core::TCH_VERSION.to_owned(),
            sat_core_version: sat_core::SAT_CORE_VERSION.to_owned(),
            source_dir: PathBuf::from(SOURCE_DIR),
            plugin_dirs: paths
                .standard
                .into_iter()
                .chain(paths.user)
                .map(|p| std::path::absolute(&p).unwrap_or(p))
                .collect(),
        }
    }

    /// `NAME=value` lines, values quoted for POSIX shells where they need it.
    pub fn shell(&self, export: bool) -> anyhow::Result<String> {
        let dirs = std::env::join_paths(&self.plugin_dirs)
            .context("a plugin directory contains the path separator `:`")?;
        let mut vars = vec![("LIBTORCH", self.libtorch.clone())];
        if let Some(abi) = &self.cxx11_abi {
            vars.push(("LIBTORCH_CXX11_ABI", abi.clone()));
        }
        vars.extend([
            ("SAT_LIBTORCH_VERSION", self.libtorch_version.clone()),
            (
                "SAT_LIBTORCH_CUDA",
                u8::from(self.libtorch_cuda).to_string(),
            ),
            ("SAT_TCH_VERSION", self.tch_version.clone()),
            ("SAT_CORE_VERSION", self.sat_core_version.clone()),
            (
                "SAT_SOURCE_DIR",
                self.source_dir.to_string_lossy().into_owned(),
            ),
            ("SAT_PLUGIN_DIRS", dirs.to_string_lossy().into_owned()),
        ]);
        let prefix = if export { "export " } else { "" };
        Ok(vars
            .iter()
            .map(|(k, v)| format!("{prefix}{k}={}\n", shell_quote(v)))
            .collect())
    }

    /// The same facts as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "libtorch": self.libtorch,
            "libtorch_cxx11_abi": self.cxx11_abi,
            "libtorch_version": self.libtorch_version,
            "libtorch_cuda": self.libtorch_cuda,
            "tch_version": self.tch_version,
            "sat_core_version": self.sat_core_version,
            "source_dir": self.source_dir,
            "plugin_dirs": self.plugin_dirs,
        })
    }
}

/// `value` as one POSIX shell word: unchanged when it holds only characters no shell
/// treats specially, else in single quotes (a `'` inside written `'\''`).
pub fn shell_quote(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:,+@%=".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Prints the build environment.
pub fn run(global: &GlobalArgs, args: &EnvArgs) -> anyhow::Result<ExitCode> {
    let env = BuildEnv::of(global);
    if !Path::new(&env.libtorch).join("lib").is_dir() {
        log::warn!(
            "the libtorch this sat-host was built with, {}, has no lib/ directory any more",
            env.libtorch
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&env.json())?);
    } else {
        print!("{}", env.shell(args.export)?);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("/opt/libtorch-2.13"), "/opt/libtorch-2.13");
        assert_eq!(shell_quote("a:b"), "a:b");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("my dir"), "'my dir'");
        assert_eq!(shell_quote("it's $HOME"), r"'it'\''s $HOME'");
    }

    #[test]
    fn assignments_name_every_fact() {
        let env = BuildEnv {
            libtorch: "/x y/libtorch".into(),
            cxx11_abi: Some("1".into()),
            libtorch_version: "2.13.0".into(),
            libtorch_cuda: false,
            tch_version: "0.26.0".into(),
            sat_core_version: "0.1.0".into(),
            source_dir: "/src/sat".into(),
            plugin_dirs: vec!["/a".into(), "/b c".into()],
        };
        let text = env.shell(true).unwrap();
        assert!(text.contains("export LIBTORCH='/x y/libtorch'\n"), "{text}");
        assert!(
            text.contains("export SAT_PLUGIN_DIRS='/a:/b c'\n"),
            "{text}"
        );
        assert!(text.contains("export SAT_TCH_VERSION=0.26.0\n"), "{text}");
        assert_eq!(env.json()["plugin_dirs"][1], "/b c");
    }
}
