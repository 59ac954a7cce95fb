//! Loading the configuration: the TOML file, then `--set key=value` overrides in order,
//! with errors that name the file, line, column and key.
use super::suggest::{clip_message, did_you_mean, shorten};
use super::RunConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// A place in the configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, or `--set` for command-line overrides.
    pub file: String,
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((l, c)) => write!(f, "{}:{l}:{c}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A configuration error with its place. Shown as `place: message`, the middle of a
/// long message left out (a value may be megabytes long).
#[derive(Debug)]
pub struct ConfigError {
    /// Where.
    pub location: Location,
    /// What.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&clip_message(&format!(
            "{}: {}",
            self.location, self.message
        )))
    }
}

impl std::error::Error for ConfigError {}

/// The configuration text a run was built from, and the overrides laid over it, for
/// locating keys in errors.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file, if any.
    pub path: Option<PathBuf>,
    /// Its text (empty without a file).
    pub text: String,
    /// The keys the command line set, in order, each with its place (`--eps`,
    /// `--set train.epochs`).
    pub overrides: Vec<(Vec<String>, String)>,
}

impl ConfigSource {
    /// The display name of the file.
    pub fn file_name(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into())
    }

    /// This source with `overrides` recorded (the value of a key is then theirs).
    pub fn with_overrides(mut self, overrides: &[Override]) -> Self {
        self.overrides = overrides
            .iter()
            .map(|o| (o.key.clone(), o.place()))
            .collect();
        self
    }

    /// Where the value of the key at `path` (e.g. `["components", "pgd", "steps"]`)
    /// comes from: the last flag or `--set` that set it (or a table holding it), else
    /// its line in the file, else the last flag or `--set` that set a key inside it,
    /// else the file (a default value).
    pub fn locate<S: AsRef<str>>(&self, path: &[S]) -> Location {
        let path: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
        let flag = |covers: &dyn Fn(&[String]) -> bool| {
            self.overrides
                .iter()
                .rev()
                .find(|(key, _)| covers(key))
                .map(|(_, place)| Location {
                    file: place.clone(),
                    line_col: None,
                })
        };
        let set_whole =
            |key: &[String]| key.len() <= path.len() && key.iter().zip(&path).all(|(k, p)| k == p);
        let set_inside =
            |key: &[String]| key.len() > path.len() && key.iter().zip(&path).all(|(k, p)| k == p);
        if let Some(place) = flag(&set_whole) {
            return place;
        }
        if let Some(offset) = key_span(&self.text, &path) {
            return Location {
                file: self.file_name(),
                line_col: Some(line_col(&self.text, offset)),
            };
        }
        flag(&set_inside).unwrap_or_else(|| Location {
            file: self.file_name(),
            line_col: None,
        })
    }

    /// An error at the key `path`.
    pub fn error_at<S: AsRef<str>>(&self, path: &[S], message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: self.locate(path),
            message: message.into(),
        }
    }
}

fn key_span<S: AsRef<str>>(text: &str, path: &[S]) -> Option<usize> {
    let doc = text.parse::<toml_edit::Document<String>>().ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let (last, parents) = path.split_last()?;
    for part in parents {
        table = table.get(part.as_ref())?.as_table_like()?;
    }
    table.key(last.as_ref())?.span().map(|s| s.start)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

/// Splits a dotted key into its segments; a segment may be quoted as in TOML
/// (`components."gradcam++".layer`).
fn split_key(key: &str) -> Result<Vec<String>, String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in the key".into());
    }
    Ok(parts.into_iter().map(|p| p.trim().to_owned()).collect())
}

/// A `--set key.path=value` override, or a flag that sets a key (`eval --eps`).
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path.
    pub key: Vec<String>,
    /// Parsed value (TOML syntax; a bare word is a string).
    pub value: toml::Value,
    /// The flag that gave the value (`--eps`), if not `--set`.
    pub flag: Option<String>,
}

impl Override {
    /// Parses `key.path=value`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected key=value"))?;
        let key = split_key(key.trim()).map_err(|m| format!("`{text}`: {m}"))?;
        if key.iter().any(String::is_empty) {
            return Err(format!("`{text}`: empty key segment"));
        }
        let value = value.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()));
        Ok(Self {
            key,
            value,
            flag: None,
        })
    }

    /// The override of `key` (dotted) by the command-line flag `flag` (`--eps`).
    pub fn from_flag(flag: &str, key: &str, value: toml::Value) -> Self {
        Self {
            key: key.split('.').map(str::to_owned).collect(),
            value,
            flag: Some(flag.to_owned()),
        }
    }

    /// Where errors about the value point: the flag, or `--set <key>`.
    pub fn place(&self) -> String {
        self.flag
            .clone()
            .unwrap_or_else(|| format!("--set {}", shorten(&self.key.join("."), 100)))
    }

    fn apply(&self, root: &mut toml::Table) -> Result<(), String> {
        let (last, parents) = self.key.split_last().expect("non-empty key");
        let mut table = root;
        for part in parents {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("`{}`: `{part}` is not a table", self.key.join(".")))?;
        }
        table.insert(last.clone(), self.value.clone());
        Ok(())
    }
}

/// Turns a toml/serde error into a message with a suggestion for unknown keys and values.
fn explain(message: &str) -> String {
    let message = message.trim();
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
        if let Some((bad, expected)) = ticked.split_first() {
            let what = if message.starts_with("unknown field") {
                "key"
            } else {
                "value"
            };
            let accepted = if expected.is_empty() {
                "nothing".to_owned()
            } else {
                expected
                    .iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return format!(
                "unknown {what} `{}`{}; accepted: {accepted}",
                shorten(bad, 60),
                did_you_mean(bad, expected.iter().copied())
            );
        }
    }
    message.to_owned()
}

/// Loads the configuration: the file (or defaults), then the overrides in order.
pub fn load(
    path: Option<&Path>,
    overrides: &[Override],
) -> Result<(RunConfig, ConfigSource), ConfigError> {
    let source = match path {
        Some(p) => {
            // A regular file of at most 16 MiB: a FIFO or /dev/zero is refused, not read.
            let text =
                sat_input::read_text(p, sat_input::Kind::Config).map_err(|e| ConfigError {
                    location: Location {
                        file: p.display().to_string(),
                        line_col: None,
                    },
                    message: format!("cannot read the config file: {}", e.reason()),
                })?;
            ConfigSource {
                path: Some(p.to_owned()),
                text,
                overrides: Vec::new(),
            }
        }
        None => ConfigSource::default(),
    };
    // The file alone first, so that its errors carry line and column.
    let from_file: RunConfig = toml::from_str(&source.text).map_err(|e| ConfigError {
        location: Location {
            file: source.file_name(),
            line_col: e.span().map(|s| line_col(&source.text, s.start)),
        },
        message: explain(e.message()),
    })?;
    let mut config = if overrides.is_empty() {
        from_file
    } else {
        let mut table: toml::Table = toml::from_str(&source.text).expect("parsed above");
        let mut config = None;
        // One override at a time, so that an error names the override that caused it.
        for o in overrides {
            let location = Location {
                file: o.place(),
                line_col: None,
            };
            o.apply(&mut table).map_err(|message| ConfigError {
                location: location.clone(),
                message,
            })?;
            config = Some(
                toml::Value::Table(table.clone())
                    .try_into::<RunConfig>()
                    .map_err(|e| ConfigError {
                        location,
                        message: explain(e.message()),
                    })?,
            );
        }
        config.expect("at least one override")
    };
    // Plugin paths are relative to the config file.
    if let Some(dir) = path.and_then(Path::parent) {
        for p in &mut config.plugins.paths {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
    let source = source.with_overrides(overrides);
    super::validate(&config, &source)?;
    Ok((config, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::Epsilon;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn unknown_key_names_line_column_and_nearest() {
        let f = write("name = \"x\"\n\n[train]\nepochs = 2\nepohcs = 3\n");
        let e = load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.location.line_col, Some((5, 1)), "{e}");
        assert!(
            e.message.contains("`epohcs`") && e.message.contains("did you mean `epochs`"),
            "{e}"
        );
    }

    #[test]
    fn malformed_toml_has_line_and_column() {
        let f = write("name = \"x\"\n[train\nepochs = 2\n");
        let e = load(Some(f.path()), &[]).unwrap_err();
        assert_eq!(e.location.line_col.map(|l| l.0), Some(2), "{e}");
    }

    #[test]
    fn overrides_apply_in_order_and_are_typed() {
        let f = write("[train]\nepochs = 2\n");
        let sets: Vec<Override> = [
            "train.epochs=7",
            "train.attack=pgd",
            "components.pgd.steps=3",
            "eval.epsilons=[\"1/255\"]",
        ]
        .iter()
        .map(|s| Override::parse(s).unwrap())
        .collect();
        let (c, _) = load(Some(f.path()), &sets).unwrap();
        assert_eq!(c.train.epochs, 7);
        assert_eq!(c.train.attack, "pgd");
        assert_eq!(c.components["pgd"]["steps"].as_integer(), Some(3));
        assert_eq!(c.eval.epsilons, vec![Epsilon(1.0 / 255.0)]);
        let bad = load(Some(f.path()), &[Override::parse("train.epoch=1").unwrap()]).unwrap_err();
        assert_eq!(bad.location.file, "--set train.epoch");
        assert!(bad.message.contains("did you mean `epochs`"), "{bad}");
    }

    #[test]
    fn override_keys_may_quote_segments() {
        let o = Override::parse("components.\"gradcam++\".layer=-2").unwrap();
        assert_eq!(o.key, vec!["components", "gradcam++", "layer"]);
        assert_eq!(o.value.as_integer(), Some(-2));
        let o = Override::parse("components.gradcam++.layer=1").unwrap();
        assert_eq!(o.key, vec!["components", "gradcam++", "layer"]);
        assert!(Override::parse("components.\"x.layer=1").is_err());
    }

    #[test]
    fn locates_component_keys() {
        let src = ConfigSource {
            path: Some("c.toml".into()),
            text: "[components.pgd]\nsteps = 3\nstepz = 4\n".into(),
            overrides: Vec::new(),
        };
        assert_eq!(
            src.locate(&["components", "pgd", "stepz"]).to_string(),
            "c.toml:3:1"
        );
        assert_eq!(src.locate(&["components", "pgd"]).line_col, Some((1, 13)));
        // A default value: the file, without a line.
        assert_eq!(src.locate(&["components", "fgsm"]).to_string(), "c.toml");
    }

    #[test]
    fn a_value_set_on_the_command_line_is_located_at_its_flag() {
        let text = "[eval]\nepsilons = [0.1]\n[components.pgd]\nsteps = 3\n";
        let sets = [
            Override::from_flag("--eps", "eval.epsilons", toml::Value::Array(Vec::new())),
            Override::parse("components.pgd={ steps = 4 }").unwrap(),
            Override::parse("components.fgsm.epsilon=0.1").unwrap(),
        ];
        let src = ConfigSource {
            path: Some("c.toml".into()),
            text: text.into(),
            overrides: Vec::new(),
        }
        .with_overrides(&sets);
        let at = |path: &[&str]| src.locate(path).to_string();
        assert_eq!(at(&["eval", "epsilons"]), "--eps");
        assert_eq!(at(&["components", "pgd", "steps"]), "--set components.pgd");
        assert_eq!(at(&["components", "fgsm"]), "--set components.fgsm.epsilon");
        assert_eq!(at(&["components"]), "c.toml:3:2");
        // The last override of a key wins.
        let again = [
            sets[0].clone(),
            Override::parse("eval.epsilons=[1]").unwrap(),
        ];
        let src = src.with_overrides(&again);
        assert_eq!(
            src.locate(&["eval", "epsilons"]).to_string(),
            "--set eval.epsilons"
        );
    }

    #[test]
    fn an_error_from_a_flag_names_the_flag_and_a_long_value_is_shortened() {
        let f = write("[eval]\nepsilons = [0.1]\n");
        let eps = Override::from_flag(
            "--eps",
            "eval.epsilons",
            toml::Value::Array(vec![toml::Value::Float(8.0)]),
        );
        let e = load(Some(f.path()), &[eps]).unwrap_err().to_string();
        assert!(
            e.starts_with("--eps: eval.epsilons: 8 is outside [0, 1]"),
            "{e}"
        );
        let ones = vec!["1"; 2_000_000].join(", ");
        let f = write(&format!("[train]\nepochs = 2\nmilestones = [{ones}]\n"));
        let e = load(Some(f.path()), &[]).unwrap_err().to_string();
        assert!(
            e.len() < 300,
            "{} bytes: {}",
            e.len(),
            &e[..300.min(e.len())]
        );
        assert!(
            e.contains("(2000000 entries) must be strictly increasing"),
            "{e}"
        );
        // Any message: a string echoed by the parser is cut in the middle.
        let long = Override::parse(&format!("train.epochs=\"{}\"", "é".repeat(1_000_000)));
        let e = load(None, &[long.unwrap()]).unwrap_err().to_string();
        assert!(
            e.starts_with("--set train.epochs: invalid type"),
            "{}",
            &e[..100]
        );
        assert!(
            e.chars().count() < 1100 && e.contains("characters left out"),
            "{e}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: crate::fuzz_cases(256),
            ..Default::default()
        })]
        /// Any config text and any `--set` text: a config or an error with a place.
        #[test]
        fn any_config_text_loads_cleanly(
            text in "(\\[[a-z.]{0,12}\\]|[a-z_.]{1,12} ?= ?(\"[^\"\n]{0,8}\"|[0-9./e+-]{1,6}|true|\\[[0-9, \"/]{0,10}\\])|\n|#.{0,5}|\\PC{0,3}){0,30}",
            set in "\\PC{0,40}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, &text).unwrap();
            let overrides: Vec<Override> = Override::parse(&set).into_iter().collect();
            if let Err(e) = load(Some(&path), &overrides) {
                let shown = e.to_string();
                proptest::prop_assert!(shown.contains("c.toml") || shown.starts_with("--set"), "{}", shown);
            }
        }
    }
}
