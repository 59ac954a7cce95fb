//! Finding, loading and checking plugin libraries, and creating their components.
use super::trust;
use crate::config::suggest::did_you_mean;
use crate::config::{ConfigError, ConfigSource};
use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::RStr;
use sat_core::{
    BuildInfo, ComponentBox, ComponentInfo, ComponentKind, PluginModuleRef, BUILD_INFO,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why loading plugins failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A path given for plugins does not exist or cannot be read.
    #[error("plugin path {path}: {reason}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file is not a loadable sat plugin library.
    #[error("{path} is not a sat plugin library: {reason}")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// The library was built against other versions.
    #[error("{path} was built against {theirs}, but this sat-host uses {ours}; rebuild the plugin against this sat-core")]
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// The library's versions.
        theirs: String,
        /// The host's versions.
        ours: String,
    },
    /// Two libraries provide a component of the same name and kind.
    #[error("{kind} `{name}` is provided twice: by {first} and by {second}")]
    Duplicate {
        /// Its kind.
        kind: ComponentKind,
        /// Component name.
        name: String,
        /// First library.
        first: PathBuf,
        /// Second library.
        second: PathBuf,
    },
    /// The library, or a directory on its way, may be written by others, so it could
    /// have been planted or replaced.
    #[error("refusing to load {path}: {reason} (pass --allow-insecure-plugins to load it anyway)")]
    Insecure {
        /// The library.
        path: PathBuf,
        /// What is not trusted.
        reason: String,
    },
    /// A library named by a run directory's `config.toml` and not also given on the
    /// command line or in `SAT_PLUGIN_PATH`: a run directory may come from someone
    /// else, so its list is never loaded on its own authority.
    #[error("refusing to load {path}, listed under [plugins] paths in {config}: {reason}; pass it with --plugin-dir (or in SAT_PLUGIN_PATH) to load it")]
    Recorded {
        /// The library.
        path: PathBuf,
        /// The run directory's config file.
        config: PathBuf,
        /// What is not trusted.
        reason: String,
    },
    /// No component of that name and kind.
    #[error("no {kind} component `{name}`{suggestion}; available {kind} components: {available}")]
    Unknown {
        /// Kind asked for.
        kind: ComponentKind,
        /// Name asked for.
        name: String,
        /// "; did you mean …?"
        suggestion: String,
        /// The names there are.
        available: String,
    },
    /// The component rejected its configuration.
    #[error("{component} (from {library}) rejected its configuration: {message}")]
    Rejected {
        /// Component.
        component: String,
        /// Library file.
        library: PathBuf,
        /// Its message.
        message: String,
    },
}

/// The first `n` non-empty lines of a (possibly very long) loader message.
fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = lines.iter().take(n).copied().collect::<Vec<_>>().join(" ");
    if lines.len() > n {
        log::debug!("full loader message: {text}");
        out.push_str(" …");
    }
    out
}

fn describe(build: &BuildInfo) -> String {
    format!(
        "sat-core {}, tch {}, libtorch {}",
        build.sat_core, build.tch, build.libtorch
    )
}

/// A loaded plugin library (never unloaded).
#[derive(Clone)]
pub struct Library {
    /// Absolute path of the file.
    pub path: PathBuf,
    /// Crate name and version of the library.
    pub name: String,
    /// Its root module.
    pub module: PluginModuleRef,
}

/// A component and the library that provides it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Listing information.
    pub info: ComponentInfo,
    /// Index into [`Registry::libraries`].
    pub library: usize,
}

/// Where to look for plugin libraries, in order.
#[derive(Debug, Clone, Default)]
pub struct SearchPaths {
    /// Directories scanned for `libsat_plugin_*` only (next to the binary).
    pub standard: Vec<PathBuf>,
    /// Directories (every shared library in them) and files, from `--plugin-dir`,
    /// `SAT_PLUGIN_PATH` and the config's `plugins.paths`.
    pub user: Vec<PathBuf>,
    /// Accept libraries that fail the trust check (with a warning).
    pub allow_insecure: bool,
    /// With `eval --run` and `run --resume`: the run directory's `config.toml`, whose
    /// `[plugins] paths` are loaded only if they are also given with `--plugin-dir` or
    /// in `SAT_PLUGIN_PATH` (then they pass the usual trust check).
    pub recorded_in: Option<PathBuf>,
    /// How many entries at the end of `user` are the config's `[plugins] paths`.
    pub config_paths: usize,
}

impl SearchPaths {
    /// The standard locations plus `--plugin-dir`s, `SAT_PLUGIN_PATH` and config paths.
    pub fn new(plugin_dirs: &[PathBuf], config_paths: &[PathBuf], allow_insecure: bool) -> Self {
        let standard = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .into_iter()
            .collect();
        let mut user: Vec<PathBuf> = plugin_dirs.to_vec();
        if let Some(var) = std::env::var_os("SAT_PLUGIN_PATH") {
            user.extend(std::env::split_paths(&var).filter(|p| !p.as_os_str().is_empty()));
        }
        user.extend(config_paths.iter().cloned());
        Self {
            standard,
            user,
            allow_insecure,
            recorded_in: None,
            config_paths: config_paths.len(),
        }
    }
}

impl Registry {
    /// The workspace's plugin libraries as tests of the host see them: those `cargo
    /// build --workspace` put in the profile directory (`target/<profile>`) above the
    /// running test executable (`target/<profile>/deps/<test>`). An error names the
    /// directory when they are not built.
    pub fn of_test_profile() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("test executable: {e}"))?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| format!("{} has no target/<profile> above it", exe.display()))?;
        for library in ["libsat_plugin_attacks.so", "libsat_plugin_objectives.so"] {
            if !dir.join(library).exists() {
                return Err(format!(
                    "{} has no {library}: run `cargo build --workspace` first (scripts/test does)",
                    dir.display()
                ));
            }
        }
        Registry::discover(&SearchPaths {
            standard: vec![dir.to_path_buf()],
            ..Default::default()
        })
        .map_err(|e| format!("the workspace's plugins do not load: {e}"))
    }
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The loaded libraries and their components.
#[derive(Debug, Default)]
pub struct Registry {
    /// Libraries in load order.
    pub libraries: Vec<Library>,
    /// Components by name and kind: a name may be used once per kind (the `trades`
    /// attack and the `trades` objective are two parts of one method and share the
    /// table `[components.trades]`).
    components: BTreeMap<(String, ComponentKind), Entry>,
}

const LIB_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

/// How many entries at the end of `paths.user` come from the config's `[plugins] paths`.
fn config_count(paths: &SearchPaths) -> usize {
    paths.config_paths.min(paths.user.len())
}

fn shared_libraries(dir: &Path, only_standard: bool) -> Result<Vec<PathBuf>, RegistryError> {
    let unreadable = |e: std::io::Error| RegistryError::Unreadable {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let prefix = if only_standard { "libsat_plugin_" } else { "" };
        if name.starts_with(prefix) && name.ends_with(LIB_SUFFIX) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl Registry {
    /// Loads every library found on `paths`.
    pub fn discover(paths: &SearchPaths) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        let mut files = Vec::new();
        for dir in &paths.standard {
            if dir.is_dir() {
                files.extend(
                    shared_libraries(dir, true)?
                        .into_iter()
                        .map(|f| (f, dir.clone())),
                );
            }
        }
        let command_line: Vec<PathBuf> = paths
            .user
            .iter()
            .take(paths.user.len() - config_count(paths))
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        for (i, path) in paths.user.iter().enumerate() {
            // Paths from a run directory's config.toml come last in `user`.
            let recorded = paths
                .recorded_in
                .as_ref()
                .filter(|_| i >= paths.user.len() - config_count(paths) && path.exists())
                .filter(|_| {
                    let resolved = path.canonicalize().ok();
                    !command_line.iter().any(|c| Some(c) == resolved.as_ref())
                });
            if let Some(config) = recorded {
                return Err(RegistryError::Recorded {
                    path: path.clone(),
                    config: config.clone(),
                    reason:
                        "a run directory's own list of libraries is not loaded on its authority"
                            .into(),
                });
            }
            if path.is_dir() {
                files.extend(
                    shared_libraries(path, false)?
                        .into_iter()
                        .map(|f| (f, path.clone())),
                );
            } else if path.is_file() {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                files.push((path.clone(), dir));
            } else {
                return Err(RegistryError::Unreadable {
                    path: path.clone(),
                    reason: "no such file or directory".into(),
                });
            }
        }
        for (file, _dir) in files {
            registry.load_trusted(file, paths.allow_insecure)?;
        }
        Ok(registry)
    }

    /// Loads `file` once its ownership passes the trust check (or, with
    /// `allow_insecure`, with a warning); a library already loaded is skipped.
    fn load_trusted(&mut self, file: PathBuf, allow_insecure: bool) -> Result<(), RegistryError> {
        // The resolved path is checked and opened: a link cannot be swapped between.
        let file = match trust::check_ownership(&file) {
            Ok(resolved) => resolved,
            Err(reason) if allow_insecure => {
                log::warn!(
                    "--allow-insecure-plugins: loading {} although {reason}",
                    file.display()
                );
                file.canonicalize().unwrap_or(file)
            }
            Err(reason) => return Err(RegistryError::Insecure { path: file, reason }),
        };
        if self.libraries.iter().any(|l| l.path == file) {
            return Ok(());
        }
        self.load(&file)
    }

    /// Loads one library, checks its versions and registers its components.
    pub fn load(&mut self, path: &Path) -> Result<(), RegistryError> {
        let not_a_plugin = |e: LibraryError| RegistryError::NotAPlugin {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        // Before dlopen runs any of its code: is it a sat plugin at all?
        trust::exports_root_module(path).map_err(|reason| RegistryError::NotAPlugin {
            path: path.to_owned(),
            reason,
        })?;
        let module = lib_header_from_path(path)
            .map_err(not_a_plugin)?
            .init_root_module::<PluginModuleRef>()
            .map_err(|e| match e {
                LibraryError::IncompatibleVersionNumber { .. }
                | LibraryError::AbiInstability(_) => RegistryError::VersionMismatch {
                    path: path.to_owned(),
                    theirs: format!(
                        "an incompatible sat plugin ABI ({})",
                        first_lines(&e.to_string(), 4)
                    ),
                    ours: describe(&BUILD_INFO),
                },
                other => not_a_plugin(other),
            })?;
        let build = module.build();
        if build != BUILD_INFO {
            return Err(RegistryError::VersionMismatch {
                path: path.to_owned(),
                theirs: describe(&build),
                ours: describe(&BUILD_INFO),
            });
        }
        let name = format!("{} {}", module.library(), module.library_version());
        log::info!(
            "loaded plugin library {name} from {} ({})",
            path.display(),
            describe(&build)
        );
        let index = self.libraries.len();
        let components =
            (module.components())()
                .into_result()
                .map_err(|e| RegistryError::NotAPlugin {
                    path: path.to_owned(),
                    reason: format!("its component list is broken: {e}"),
                })?;
        for info in components {
            let key = (info.name.to_string(), info.kind);
            if let Some(existing) = self.components.get(&key) {
                return Err(RegistryError::Duplicate {
                    kind: info.kind,
                    name: key.0,
                    first: self.libraries[existing.library].path.clone(),
                    second: path.to_owned(),
                });
            }
            self.components.insert(
                key,
                Entry {
                    info,
                    library: index,
                },
            );
        }
        self.libraries.push(Library {
            path: path.to_owned(),
            name,
            module,
        });
        Ok(())
    }

    /// Every component, by name then kind.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.components.values()
    }

    /// The components called `name` (at most one per kind).
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Entry> {
        self.components
            .range((name.to_owned(), ComponentKind::ALL[0])..)
            .take_while(move |((n, _), _)| n == name)
            .map(|(_, e)| e)
    }

    /// The component `name` of `kind`, or an error listing the available ones.
    pub fn find(&self, name: &str, kind: ComponentKind) -> Result<&Entry, RegistryError> {
        match self.components.get(&(name.to_owned(), kind)) {
            Some(e) => Ok(e),
            None => {
                let names: Vec<&str> = self
                    .entries()
                    .filter(|e| e.info.kind == kind)
                    .map(|e| e.info.name.as_str())
                    .collect();
                Err(RegistryError::Unknown {
                    kind,
                    name: name.to_owned(),
                    suggestion: did_you_mean(name, names.iter().copied()),
                    available: if names.is_empty() {
                        "none loaded".into()
                    } else {
                        names.join(", ")
                    },
                })
            }
        }
    }

    /// The library that provides `entry`.
    pub fn library(&self, entry: &Entry) -> &Library {
        &self.libraries[entry.library]
    }

    fn rejected(&self, entry: &Entry, message: impl Into<String>) -> RegistryError {
        RegistryError::Rejected {
            component: format!("{} `{}`", entry.info.kind.noun(), entry.info.name),
            library: self.library(entry).path.clone(),
            message: message.into(),
        }
    }

    /// Creates the component `name` of `kind` from its TOML table. Keys that belong to
    /// another component of the same name (the shared `[components.trades]`) are left
    /// out; any other key goes to the component, which rejects what it does not know.
    pub fn create(
        &self,
        kind: ComponentKind,
        name: &str,
        config: &toml::Table,
    ) -> Result<ComponentBox, RegistryError> {
        let entry = self.find(name, kind)?;
        let own = |key: &str| entry.info.keys.iter().any(|k| k.as_str() == key);
        let others = |key: &str| {
            self.named(name)
                .any(|e| e.info.kind != kind && e.info.keys.iter().any(|k| k.as_str() == key))
        };
        let table: toml::Table = config
            .iter()
            .filter(|(key, _)| own(key) || !others(key))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let text = toml::to_string(&table).map_err(|e| self.rejected(entry, e.to_string()))?;
        let create = self.library(entry).module.create();
        let made = create(kind, RStr::from_str(name), RStr::from_str(&text))
            .into_result()
            .map_err(|e| self.rejected(entry, e.to_string()))?;
        if made.kind() != kind {
            return Err(self.rejected(
                entry,
                format!("asked for a {kind}, the library built a {}", made.kind()),
            ));
        }
        Ok(made)
    }

    /// Checks every `[components.<name>]` table: the component exists, every key is one
    /// its default configuration lists, and the component accepts the table (it is built
    /// once and dropped). Errors point into the config file.
    pub fn check_component_tables(
        &self,
        tables: &BTreeMap<String, toml::Table>,
        source: &ConfigSource,
        section: &str,
    ) -> Result<(), ConfigError> {
        let at = |name: &str, key: Option<&str>| -> Vec<String> {
            section
                .split('.')
                .chain(std::iter::once(name))
                .chain(key)
                .map(str::to_owned)
                .collect()
        };
        for (name, table) in tables {
            let entries: Vec<&Entry> = self.named(name).collect();
            if entries.is_empty() {
                let mut names: Vec<&str> = self.entries().map(|e| e.info.name.as_str()).collect();
                names.dedup();
                return Err(source.error_at(
                    &at(name, None),
                    format!(
                        "unknown component `{name}` in [{section}]{}; loaded components: {}",
                        did_you_mean(name, names.iter().copied()),
                        names.join(", ")
                    ),
                ));
            }
            let accepted: Vec<&str> = entries
                .iter()
                .flat_map(|e| e.info.keys.iter().map(|k| k.as_str()))
                .collect();
            if let Some(key) = table.keys().find(|k| !accepted.contains(&k.as_str())) {
                return Err(source.error_at(
                    &at(name, Some(key)),
                    format!(
                        "unknown key `{key}` in [{section}.{name}]{}; accepted: {}",
                        did_you_mean(key, accepted.iter().copied()),
                        accepted.join(", ")
                    ),
                ));
            }
            for entry in entries {
                self.create(entry.info.kind, name, table)
                    .map_err(|e| source.error_at(&at(name, None), e.to_string()))?;
            }
        }
        Ok(())
    }
}
