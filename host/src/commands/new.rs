//! `sat-host new saliency|attack|objective NAME --out DIR`: writes a plugin crate of its
//! own, outside the sat tree, that builds with a plain `cargo build` from its directory.
//!
//! The crate depends on `sat-core` and `sat-plugin-build` by absolute path to the sat
//! checkout this binary was built from (a plugin must be built against the very
//! `sat-core`, tch and libtorch of the host that loads it); its `.cargo/config.toml`
//! hands tch this binary's libtorch; its `Cargo.lock` is sat's own, so dependency
//! versions match sat's exactly and a target directory shared with sat reuses compiled
//! tch and torch-sys; its profiles are sat's, for the same reason. The templates are in
//! `host/templates/`.
use super::env::{BuildEnv, LIBTORCH, LIBTORCH_CXX11_ABI, SOURCE_DIR};
use super::GlobalArgs;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use sat_core::ComponentKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `sat-host new KIND NAME [--out DIR] [--crate-name CRATE]`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// What the plugin provides.
    #[arg(value_enum)]
    pub kind: NewKind,
    /// The component's name, as configs and the command line use it (`[a-z0-9+-]+`).
    pub name: String,
    /// The directory to write the crate into: new, or empty (default `./NAME`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The crate's name (default: NAME, with `+` written `-plus-`).
    #[arg(long, value_name = "CRATE")]
    pub crate_name: Option<String>,
}

/// The kinds of component a new crate can hold.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKind {
    /// A saliency source (a local-contrast map to start from).
    Saliency,
    /// An attack (one-step ℓ∞ FGSM with an optional random start).
    Attack,
    /// A training objective (cross-entropy plus logit squeezing).
    Objective,
}

impl NewKind {
    fn kind(self) -> ComponentKind {
        match self {
            NewKind::Saliency => ComponentKind::Saliency,
            NewKind::Attack => ComponentKind::Attack,
            NewKind::Objective => ComponentKind::Objective,
        }
    }
    fn lib_template(self) -> &'static str {
        match self {
            NewKind::Saliency => include_str!("../../templates/saliency.rs.tmpl"),
            NewKind::Attack => include_str!("../../templates/attack.rs.tmpl"),
            NewKind::Objective => include_str!("../../templates/objective.rs.tmpl"),
        }
    }
    /// The component's one-line description (`sat-host plugins`).
    fn description(self) -> &'static str {
        match self {
            NewKind::Saliency => "local contrast, smoothed, per image in [-1, 1]",
            NewKind::Attack => {
                "one signed-gradient linf step (FGSM), projected to the epsilon-ball and [0, 1]; optional random start"
            }
            NewKind::Objective => "cross-entropy plus logit squeezing (beta * mean squared logit)",
        }
    }
    /// The `run` flag that trains with the component.
    fn run_flag(self, name: &str) -> String {
        match self {
            NewKind::Saliency => format!("--plugin {name} --attack sat"),
            NewKind::Attack => format!("--attack {name}"),
            NewKind::Objective => format!("--objective {name}"),
        }
    }
}

/// sat's workspace manifest (its profiles and dependency versions), sat's lock file,
/// and the files common to every kind.
const SAT_MANIFEST: &str = include_str!("../../../Cargo.toml");
const SAT_LOCK: &str = include_str!("../../../Cargo.lock");
const CARGO_TOML: &str = include_str!("../../templates/Cargo.toml.tmpl");
const BUILD_RS: &str = include_str!("../../templates/build.rs.tmpl");
const CONFIG_TOML: &str = include_str!("../../templates/config.toml.tmpl");
const README: &str = include_str!("../../templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("../../templates/gitignore.tmpl");

/// Identifiers the templates use, which the component's type must not shadow.
#[rustfmt::skip]
const TEMPLATE_IDENTIFIERS: &[&str] = &[
    "Attack", "Batch", "Configurable", "Default", "Deserialize", "Device", "Epsilon", "Kind",
    "LinearModel", "Loss", "Norm", "Objective", "Option", "Oracle", "Phase", "PluginError",
    "Result", "SaliencySource", "Self", "Serialize", "Tensor", "ThreatModel", "TrainingModel",
    "TrainingObjective",
];

/// Words cargo refuses as crate names, or as library names (Rust keywords of every
/// edition, the names of the standard crates, and cargo's own directory names).
#[rustfmt::skip]
const RESERVED_CRATE_NAMES: &[&str] = &[
    "abstract", "alloc", "as", "async", "await", "become", "box", "break", "build", "const",
    "continue", "core", "crate", "deps", "do", "dyn", "else", "enum", "examples", "extern",
    "false", "final", "fn", "for", "gen", "if", "impl", "in", "incremental", "let", "loop",
    "macro", "match", "mod", "move", "mut", "override", "priv", "proc_macro", "pub", "ref",
    "return", "self", "static", "std", "struct", "super", "test", "trait", "true", "try",
    "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Checks a component name: `[a-z0-9+-]+`, as `sat_core::check_registrations` demands.
pub fn check_component_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("the component name is empty; component names match [a-z0-9+-]+, e.g. `my-source`");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '+'))
    {
        let hint = name.to_ascii_lowercase().replace(['_', ' ', '.'], "-");
        bail!(
            "`{name}` is not a valid component name: {c:?} is not allowed; component names \
             use lowercase letters, digits, `-` and `+` only ([a-z0-9+-]+), e.g. `{hint}`"
        );
    }
    Ok(())
}

/// The crate name made from a component name: `+` written `-plus-`, runs of `-`
/// squeezed, none at either end.
pub fn crate_name_of(name: &str) -> String {
    let spelled = name.replace('+', "-plus-");
    spelled
        .split('-')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The names of the packages in sat's lock file: sat's crates and its dependencies.
fn locked_package_names() -> Vec<String> {
    let lock: toml::Table = toml::from_str(SAT_LOCK).unwrap_or_default();
    lock.get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("name")?.as_str().map(str::to_owned))
        .collect()
}

/// Checks a crate name: what cargo accepts, and not the name of a crate sat builds or
/// depends on (its library would clash with that one, in the crate and in a target
/// directory shared with sat). `what` names it in messages, e.g. "--crate-name `x`".
pub fn check_crate_name(crate_name: &str, what: &str) -> anyhow::Result<()> {
    let fix = "choose another with --crate-name";
    let Some(first) = crate_name.chars().next() else {
        bail!("{what} is empty; {fix}");
    };
    if let Some(c) = crate_name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        bail!("{what} is not a valid crate name: {c:?} is not allowed (letters, digits, `-`, `_`)");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        bail!("{what} is not a valid crate name: a crate name starts with a letter; {fix}");
    }
    let lib = crate_name.replace('-', "_");
    if RESERVED_CRATE_NAMES.contains(&lib.as_str()) || RESERVED_CRATE_NAMES.contains(&crate_name) {
        bail!("{what} is reserved (a Rust keyword, a standard crate or a cargo directory); {fix}");
    }
    if lib.starts_with("sat_plugin_") {
        bail!(
            "{what} is reserved: `sat-plugin-*` libraries are sat's standard ones, which \
             sat-host loads from next to its binary (and so from a target directory shared \
             with sat); {fix}"
        );
    }
    if let Some(taken) = locked_package_names()
        .into_iter()
        .find(|p| p.replace('-', "_") == lib)
    {
        bail!(
            "{what} is taken: `{taken}` is a crate sat builds or depends on (in sat's \
             Cargo.lock), and the two libraries would clash; {fix}"
        );
    }
    Ok(())
}

/// The Rust type name of the component: the name in CamelCase (`my-source` → `MySource`,
/// `+` → `Plus`), prefixed with the kind where that would not be a fresh identifier.
pub fn type_name_of(name: &str, kind: ComponentKind) -> String {
    let camel: String = name
        .replace('+', "-plus-")
        .split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fresh = camel.starts_with(|c: char| c.is_ascii_alphabetic())
        && !TEMPLATE_IDENTIFIERS.contains(&camel.as_str());
    if fresh {
        camel
    } else {
        let prefix = match kind {
            ComponentKind::Saliency => "Saliency",
            ComponentKind::Attack => "Attack",
            ComponentKind::Objective => "Objective",
        };
        format!("{prefix}{camel}")
    }
}

/// `template` with every `{{key}}` replaced by its value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.to_owned();
    for (key, value) in values {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    text
}

/// `value` as a TOML string literal.
fn toml_string(value: &str) -> String {
    toml_edit::Value::from(value).to_string().trim().to_owned()
}

/// The `[profile.*]` tables of sat's workspace manifest, comments kept.
fn sat_profiles() -> anyhow::Result<String> {
    let doc: toml_edit::DocumentMut = SAT_MANIFEST.parse().context("sat's Cargo.toml")?;
    let mut out = toml_edit::DocumentMut::new();
    if let Some(profiles) = doc.get("profile") {
        out.insert("profile", profiles.clone());
    }
    Ok(out.to_string().trim().to_owned())
}

/// The requirement sat's workspace gives dependency `name`, as TOML.
fn sat_requirement(name: &str) -> anyhow::Result<String> {
    let doc: toml_edit::DocumentMut = SAT_MANIFEST.parse().context("sat's Cargo.toml")?;
    let item = doc
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|d| d.get(name))
        .and_then(|i| i.as_value())
        .with_context(|| format!("sat's Cargo.toml has no [workspace.dependencies] {name}"))?;
    Ok(item.to_string().trim().to_owned())
}

/// A file of the new crate: its path inside the crate and its text.
pub type CrateFile = (&'static str, String);

/// The files of the crate for component `name` of `kind`, named `crate_name`, depending
/// on the sat checkout `sat_dir` and handing tch `libtorch`.
pub fn crate_files(
    kind: NewKind,
    name: &str,
    crate_name: &str,
    sat_dir: &Path,
    libtorch: &str,
    cxx11_abi: &str,
) -> anyhow::Result<Vec<CrateFile>> {
    let sat = sat_dir
        .to_str()
        .with_context(|| format!("the sat checkout's path {} is not UTF-8", sat_dir.display()))?;
    let type_name = type_name_of(name, kind.kind());
    let lib_file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let (core, plugin_build) = (sat_dir.join("core"), sat_dir.join("plugin-build"));
    let profiles = sat_profiles()?;
    let (abi_stable, serde) = (sat_requirement("abi_stable")?, sat_requirement("serde")?);
    let run_flag = kind.run_flag(name);
    let values: Vec<(&str, &str)> = vec![
        ("kind", kind.kind().as_str()),
        ("noun", kind.kind().noun()),
        ("name", name),
        ("crate", crate_name),
        ("Type", &type_name),
        ("description", kind.description()),
        ("sat_core_version", sat_core::SAT_CORE_VERSION),
        ("sat_dir", sat),
        ("lib_file", &lib_file),
        ("run_flag", &run_flag),
    ];
    let core = toml_string(&core.to_string_lossy());
    let plugin_build = toml_string(&plugin_build.to_string_lossy());
    let manifest = fill(
        CARGO_TOML,
        &[
            values.as_slice(),
            &[
                ("core_path", &core),
                ("plugin_build_path", &plugin_build),
                ("abi_stable", &abi_stable),
                ("serde", &serde),
                ("profiles", &profiles),
            ],
        ]
        .concat(),
    );
    let config = fill(
        CONFIG_TOML,
        &[
            ("libtorch", &toml_string(libtorch)),
            ("cxx11_abi", &toml_string(cxx11_abi)),
        ],
    );
    Ok(vec![
        ("Cargo.toml", manifest),
        ("Cargo.lock", SAT_LOCK.to_owned()),
        ("build.rs", BUILD_RS.to_owned()),
        ("src/lib.rs", fill(kind.lib_template(), &values)),
        ("README.md", fill(README, &values)),
        (".cargo/config.toml", config),
        (".gitignore", GITIGNORE.to_owned()),
    ])
}

/// Refuses an existing file, or a directory with anything in it.
fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {} exists and is not a directory", out.display());
    }
    let mut entries =
        std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?;
    if entries.next().is_some() {
        bail!(
            "--out {} exists and is not empty; sat-host new writes only into a new or empty \
             directory",
            out.display()
        );
    }
    Ok(())
}

/// Writes the crate.
pub fn run(global: &GlobalArgs, args: &NewArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.as_str();
    check_component_name(name)?;
    let crate_name = match &args.crate_name {
        Some(c) => {
            check_crate_name(c, &format!("--crate-name `{c}`"))?;
            c.clone()
        }
        None => {
            let derived = crate_name_of(name);
            let what = format!("the crate name `{derived}` (made from the component name)");
            check_crate_name(&derived, &what)?;
            derived
        }
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(name));
    check_out_dir(&out)?;
    let sat_dir = Path::new(SOURCE_DIR);
    for part in ["core/Cargo.toml", "plugin-build/Cargo.toml"] {
        if !sat_dir.join(part).is_file() {
            bail!(
                "this sat-host was built from {}, which no longer holds {part}; the new crate \
                 depends on sat-core there by path: run the sat-host of an existing checkout",
                sat_dir.display()
            );
        }
    }
    let files = crate_files(
        args.kind,
        name,
        &crate_name,
        sat_dir,
        LIBTORCH,
        LIBTORCH_CXX11_ABI,
    )?;
    for (path, text) in &files {
        let path = out.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let env = BuildEnv::of(global);
    let kind = args.kind;
    let shown = out.display();
    let lib = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    println!(
        "created the {} `{name}` in {shown} (crate {crate_name}, sat-core {}, libtorch {} at {})",
        kind.kind().noun(),
        env.sat_core_version,
        env.libtorch_version,
        env.libtorch,
    );
    println!("next:");
    println!("  cd {shown}");
    println!(
        "  cargo build      # or CARGO_TARGET_DIR={}/target cargo build, to reuse sat's compiled tch",
        sat_dir.display()
    );
    println!("  cargo test");
    println!("  sat-host --plugin-dir target/debug/{lib} plugins describe {name}");
    println!(
        "  sat-host --plugin-dir target/debug/{lib} run {}",
        kind.run_flag(name)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names_are_checked() {
        check_component_name("my-source").unwrap();
        check_component_name("pgd+sat").unwrap();
        let err = check_component_name("My_Source").unwrap_err().to_string();
        assert!(
            err.contains("`My_Source` is not a valid component name"),
            "{err}"
        );
        assert!(err.contains("e.g. `my-source`"), "{err}");
        assert!(check_component_name("").is_err());
    }

    #[test]
    fn crate_names_are_derived_and_checked() {
        assert_eq!(crate_name_of("my-source"), "my-source");
        assert_eq!(crate_name_of("pgd+sat"), "pgd-plus-sat");
        assert_eq!(crate_name_of("-x+"), "x-plus");
        check_crate_name("my-source", "c").unwrap();
        let digit = check_crate_name("3d-prior", "c").unwrap_err().to_string();
        assert!(digit.contains("starts with a letter"), "{digit}");
        let keyword = check_crate_name("fn", "c").unwrap_err().to_string();
        assert!(keyword.contains("reserved"), "{keyword}");
        let taken = check_crate_name("serde", "c").unwrap_err().to_string();
        assert!(taken.contains("sat's Cargo.lock"), "{taken}");
        assert!(check_crate_name("sat_core", "c").is_err());
        let standard = check_crate_name("sat-plugin-mine", "c")
            .unwrap_err()
            .to_string();
        assert!(standard.contains("standard"), "{standard}");
        assert!(check_crate_name("", "c").is_err());
    }

    #[test]
    fn type_names_are_fresh_identifiers() {
        assert_eq!(
            type_name_of("my-source", ComponentKind::Saliency),
            "MySource"
        );
        assert_eq!(type_name_of("pgd+sat", ComponentKind::Attack), "PgdPlusSat");
        assert_eq!(type_name_of("3d", ComponentKind::Saliency), "Saliency3d");
        assert_eq!(
            type_name_of("batch", ComponentKind::Objective),
            "ObjectiveBatch"
        );
    }

    #[test]
    fn every_placeholder_is_filled_and_the_manifest_parses() {
        for kind in [NewKind::Saliency, NewKind::Attack, NewKind::Objective] {
            let files = crate_files(
                kind,
                "a+b",
                "a-plus-b",
                Path::new("/opt/my sat"),
                "/opt/lib\"torch",
                "1",
            )
            .unwrap();
            for (path, text) in &files {
                assert!(!text.contains("{{"), "{path}:\n{text}");
            }
            let text = |p: &str| files.iter().find(|f| f.0 == p).unwrap().1.clone();
            let manifest: toml::Table = toml::from_str(&text("Cargo.toml")).unwrap();
            assert_eq!(manifest["package"]["name"].as_str(), Some("a-plus-b"));
            let deps = &manifest["dependencies"];
            assert_eq!(deps["sat-core"]["path"].as_str(), Some("/opt/my sat/core"));
            assert!(deps["serde"]["features"].as_array().is_some());
            assert!(manifest["workspace"].as_table().unwrap().is_empty());
            let ours: toml::Table = toml::from_str(SAT_MANIFEST).unwrap();
            assert_eq!(manifest["profile"], ours["profile"]);
            let config: toml::Table = toml::from_str(&text(".cargo/config.toml")).unwrap();
            assert_eq!(config["env"]["LIBTORCH"].as_str(), Some("/opt/lib\"torch"));
            let lib = text("src/lib.rs");
            assert!(lib.contains("name = \"a+b\""), "{lib}");
            assert!(lib.contains("pub struct APlusBConfig"), "{lib}");
            assert_eq!(text("Cargo.lock"), SAT_LOCK);
        }
    }

    /// The example plugin builds with the workspace's profiles, so that sharing the
    /// target directory (scripts/test) reuses the workspace's dependencies instead of
    /// building libtorch's bindings a second time (ten minutes on two cores).
    #[test]
    fn the_example_plugin_has_the_workspace_profiles() {
        let example: toml::Table =
            toml::from_str(include_str!("../../../examples/centre-prior/Cargo.toml")).unwrap();
        let ours: toml::Table = toml::from_str(SAT_MANIFEST).unwrap();
        assert_eq!(example["profile"], ours["profile"]);
    }
}
