//! Loading the configuration: the TOML file, then `--set key=value` overrides in order,
//! with errors that name the file, line, column and key.
use super::suggest::did_you_mean;
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

/// A configuration error with its place.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// Where.
    pub location: Location,
    /// What.
    pub message: String,
}

/// The configuration text a run was built from, for locating keys in errors.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file, if any.
    pub path: Option<PathBuf>,
    /// Its text (empty without a file).
    pub text: String,
}

impl ConfigSource {
    /// The display name of the file.
    pub fn file_name(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".into())
    }

    /// Where the key at `path` (e.g. `["components", "pgd", "steps"]`) is written, or
    /// `--set <key>` if the file does not contain it.
    pub fn locate<S: AsRef<str>>(&self, path: &[S]) -> Location {
        let line_col = key_span(&self.text, path).map(|offset| line_col(&self.text, offset));
        match line_col {
            Some(lc) => Location {
                file: self.file_name(),
                line_col: Some(lc),
            },
            None => Location {
                file: format!(
                    "--set {}",
                    path.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(".")
                ),
                line_col: None,
            },
        }
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

/// A `--set key.path=value` override.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key path.
    pub key: Vec<String>,
    /// Parsed value (TOML syntax; a bare word is a string).
    pub value: toml::Value,
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
        Ok(Self { key, value })
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
                "unknown {what} `{bad}`{}; accepted: {accepted}",
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
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                location: Location {
                    file: p.display().to_string(),
                    line_col: None,
                },
                message: format!("cannot read the config file: {e}"),
            })?;
            ConfigSource {
                path: Some(p.to_owned()),
                text,
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
                file: format!("--set {}", o.key.join(".")),
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
        };
        assert_eq!(
            src.locate(&["components", "pgd", "stepz"]).to_string(),
            "c.toml:3:1"
        );
        assert_eq!(src.locate(&["components", "pgd"]).line_col, Some((1, 13)));
        assert_eq!(
            src.locate(&["components", "fgsm"]).file,
            "--set components.fgsm"
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
