//! `sat-host compare RUN...`: one table of several run directories (what each run
//! trained with, clean and robust accuracy, alignment, training time, status) as
//! Markdown, CSV or JSON, and optionally one SVG overlaying their robust-accuracy curves.
//!
//! It only reads files: each run's `metrics.json` (tolerantly: fields it does not know are
//! ignored, missing optional ones are blank) and `config.toml` (for the method).
use super::GlobalArgs;
use crate::report::plot::{compare_svg, RunCurve};
use crate::report::{write_atomic, RobustAccuracy, RunStatus};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use sat_core::Epsilon;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `sat-host compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Run directories (each with a metrics.json; config.toml for the method).
    #[arg(value_name = "RUN", required = true)]
    pub runs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// Write the table to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write an SVG overlaying the runs' robust-accuracy curves (accuracy against
    /// ε; a colour per run, a dash pattern per attack).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Names of the runs in the table and the legend, comma-separated, one per RUN
    /// (default: each directory's name).
    #[arg(long, value_name = "A,B,..", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Leave out the training-time column (times from a shared machine mean little).
    #[arg(long)]
    pub no_time: bool,
}

/// A table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A Markdown table, for people (accuracies to 3 decimals).
    Md,
    /// CSV with a header row, for scripts (full precision; empty where blank).
    Csv,
    /// A JSON list of one object a run with stable keys, for scripts.
    Json,
}

/// The parts of `metrics.json` the comparison uses; other fields are ignored.
#[derive(Debug, Deserialize)]
struct MetricsFile {
    status: RunStatus,
    #[serde(default)]
    clean_accuracy: Option<f64>,
    #[serde(default)]
    robust_accuracy: Vec<RobustAccuracy>,
    #[serde(default)]
    alignment: Option<f64>,
    #[serde(default)]
    epochs: Vec<EpochSeconds>,
    #[serde(default)]
    error: Option<String>,
}

/// The wall time of one epoch in `metrics.json`.
#[derive(Debug, Deserialize)]
struct EpochSeconds {
    #[serde(default)]
    seconds: f64,
}

/// What a run trained with, from its `config.toml` (`None`: no config.toml).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Method {
    /// `[train] attack` (`"none"` when empty).
    pub attack: String,
    /// `[train] saliency`.
    pub saliency: Vec<String>,
    /// `[train] objective`.
    pub objective: String,
    /// `[train] mix`, when the run mixes two training steps.
    pub mix: Option<String>,
    /// `[model] arch`.
    pub model: String,
}

impl Method {
    /// `attack=… [saliency=a+b] [mix=…] objective=… model=…`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("attack={}", self.attack)];
        if !self.saliency.is_empty() {
            parts.push(format!("saliency={}", self.saliency.join("+")));
        }
        if let Some(mix) = &self.mix {
            parts.push(format!("mix={mix}"));
        }
        parts.push(format!("objective={}", self.objective));
        parts.push(format!("model={}", self.model));
        parts.join(" ")
    }
}

/// One run as the comparison sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Its name in the table.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// What it trained with, when its config.toml is there.
    pub method: Option<Method>,
    /// Where it stands (a running or failed run is listed, marked so).
    pub status: RunStatus,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Clean test accuracy.
    pub clean: Option<f64>,
    /// Robust accuracies.
    pub robust: Vec<RobustAccuracy>,
    /// Mean alignment.
    pub alignment: Option<f64>,
    /// The sum of its epochs' wall times (training only; `None` without epochs).
    pub train_seconds: Option<f64>,
}

/// A robust-accuracy column: one attack, norm and budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Attack component.
    pub attack: String,
    /// `"linf"` or `"l2"`.
    pub norm: String,
    /// Budget.
    pub epsilon: f64,
}

impl Column {
    /// `pgd linf 2/255`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {}",
            self.attack,
            self.norm,
            Epsilon(self.epsilon).shown(&self.norm)
        )
    }

    fn matches(&self, r: &RobustAccuracy) -> bool {
        r.attack == self.attack
            && r.norm == self.norm
            && Epsilon(r.epsilon).to_string() == Epsilon(self.epsilon).to_string()
    }
}

/// The comparison: its rows and the union of their robust-accuracy columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// One row a run, in the order given.
    pub rows: Vec<RunRow>,
    /// Every (attack, norm, ε) of any run, sorted by attack, norm and ε.
    pub columns: Vec<Column>,
    /// Whether the training-time column is shown.
    pub time: bool,
}

/// `sat-host compare`.
pub fn run(_global: &GlobalArgs, args: &CompareArgs) -> anyhow::Result<ExitCode> {
    if !args.names.is_empty() && args.names.len() != args.runs.len() {
        bail!(
            "--names gives {} names for {} runs",
            args.names.len(),
            args.runs.len()
        );
    }
    let rows = args
        .runs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            settle_if_dead(dir);
            read_run(dir, args.names.get(i).cloned())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let table = Table::new(rows, !args.no_time);
    let text = match args.format {
        Format::Md => table.markdown(),
        Format::Csv => table.csv(),
        Format::Json => serde_json::to_string_pretty(&table.json())? + "\n",
    };
    match &args.out {
        Some(path) => write_atomic(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &args.svg {
        let curves: Vec<RunCurve<'_>> = table
            .rows
            .iter()
            .map(|r| RunCurve {
                name: &r.name,
                clean: r.clean,
                robust: &r.robust,
            })
            .collect();
        let svg = compare_svg("robust accuracy against ε", &curves);
        write_atomic(path, svg.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A run whose `metrics.json` says `running` while no process holds its lock is dead
/// (its writer was killed): it is recorded as `failed` before it is listed. A live run
/// (lock held) is left alone; a directory compare cannot write is listed as it is.
fn settle_if_dead(dir: &Path) {
    let run = crate::report::RunDir {
        path: dir.to_path_buf(),
    };
    let running = crate::report::Metrics::read(&run.file("metrics.json"))
        .is_ok_and(|m| m.status == RunStatus::Running);
    if !running {
        return;
    }
    if let Err(e) = run.settle_if_abandoned("found by sat-host compare", std::time::Duration::ZERO)
    {
        log::warn!("{}: cannot record the dead run: {e:#}", dir.display());
    }
}

/// Reads the run directory `dir` (named `name`, or the directory's name).
pub fn read_run(dir: &Path, name: Option<String>) -> anyhow::Result<RunRow> {
    let path = dir.join("metrics.json");
    let text = sat_input::read_text(&path, sat_input::Kind::Report).with_context(|| {
        format!(
            "run {}: cannot read {} (is it a run directory?)",
            dir.display(),
            path.display()
        )
    })?;
    let metrics: MetricsFile = serde_json::from_str(&text)
        .with_context(|| format!("run {}: malformed {}", dir.display(), path.display()))?;
    let name = name.unwrap_or_else(|| {
        dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let train_seconds =
        (!metrics.epochs.is_empty()).then(|| metrics.epochs.iter().map(|e| e.seconds).sum());
    Ok(RunRow {
        name,
        dir: dir.to_path_buf(),
        method: read_method(dir)?,
        status: metrics.status,
        error: metrics.error,
        clean: metrics.clean_accuracy,
        robust: metrics.robust_accuracy,
        alignment: metrics.alignment,
        train_seconds,
    })
}

/// The method of the run in `dir` from its config.toml; `None` if there is none (a
/// directory `sat-host eval` wrote beside a checkpoint).
fn read_method(dir: &Path) -> anyhow::Result<Option<Method>> {
    let path = dir.join("config.toml");
    let text = match sat_input::read_text(&path, sat_input::Kind::Config) {
        Ok(text) => text,
        Err(sat_input::InputError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("run {}: cannot read {}", dir.display(), path.display()))
        }
    };
    let config: toml::Table = text
        .parse()
        .with_context(|| format!("run {}: malformed {}", dir.display(), path.display()))?;
    let text_at = |table: &str, key: &str| -> String {
        config
            .get(table)
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let saliency = config
        .get("train")
        .and_then(|t| t.get("saliency"))
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let attack = text_at("train", "attack");
    Ok(Some(Method {
        attack: if attack.is_empty() {
            "none".into()
        } else {
            attack
        },
        saliency,
        objective: text_at("train", "objective"),
        mix: Some(text_at("train", "mix")).filter(|m| !m.is_empty()),
        model: text_at("model", "arch"),
    }))
}

impl Table {
    /// The table of `rows`, with the union of their robust-accuracy columns.
    pub fn new(rows: Vec<RunRow>, time: bool) -> Self {
        let mut columns: Vec<Column> = Vec::new();
        for r in rows.iter().flat_map(|row| &row.robust) {
            if !columns.iter().any(|c| c.matches(r)) {
                columns.push(Column {
                    attack: r.attack.clone(),
                    norm: r.norm.clone(),
                    epsilon: r.epsilon,
                });
            }
        }
        columns.sort_by(|a, b| {
            (&a.attack, &a.norm)
                .cmp(&(&b.attack, &b.norm))
                .then(a.epsilon.total_cmp(&b.epsilon))
        });
        Self {
            rows,
            columns,
            time,
        }
    }

    /// Whether any run has an alignment (the column is shown only then).
    fn has_alignment(&self) -> bool {
        self.rows.iter().any(|r| r.alignment.is_some())
    }

    /// The accuracy of `row` in `column`, if it was evaluated so (the first if twice).
    fn accuracy(row: &RunRow, column: &Column) -> Option<f64> {
        row.robust
            .iter()
            .find(|r| column.matches(r))
            .map(|r| r.accuracy)
    }

    /// The header: run, method, clean, the robust columns, [alignment], [train time], status.
    fn header(&self, time: &str) -> Vec<String> {
        let mut header = vec!["run".to_owned(), "method".into(), "clean".into()];
        header.extend(self.columns.iter().map(Column::label));
        if self.has_alignment() {
            header.push("alignment".into());
        }
        if self.time {
            header.push(time.into());
        }
        header.push("status".into());
        header
    }

    /// The cells of `row`, with numbers written by `number` and the training time by
    /// `seconds` (blank where absent).
    fn cells(
        &self,
        row: &RunRow,
        number: impl Fn(f64) -> String,
        seconds: impl Fn(f64) -> String,
    ) -> Vec<String> {
        let blank = |v: Option<f64>| v.map(&number).unwrap_or_default();
        let mut cells = vec![
            row.name.clone(),
            row.method.as_ref().map(Method::summary).unwrap_or_default(),
            blank(row.clean),
        ];
        cells.extend(self.columns.iter().map(|c| blank(Self::accuracy(row, c))));
        if self.has_alignment() {
            cells.push(blank(row.alignment));
        }
        if self.time {
            cells.push(row.train_seconds.map(&seconds).unwrap_or_default());
        }
        cells.push(status_word(row.status).to_owned());
        cells
    }

    /// A Markdown table (accuracies to 3 decimals, training time as `1h 02m`, `8m 12s`).
    pub fn markdown(&self) -> String {
        let line = |cells: Vec<String>| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let header = self.header("train time");
        let mut md = line(header.clone());
        md += &format!("|{}\n", "---|".repeat(header.len()));
        for row in &self.rows {
            md += &line(self.cells(row, |v| format!("{v:.3}"), duration));
        }
        md
    }

    /// CSV with a header row; numbers at full precision, training time in seconds.
    pub fn csv(&self) -> String {
        let line = |cells: Vec<String>| {
            let cells: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
            format!("{}\n", cells.join(","))
        };
        let mut csv = line(self.header("train_seconds"));
        for row in &self.rows {
            csv += &line(self.cells(row, |v| v.to_string(), |s| s.to_string()));
        }
        csv
    }

    /// A list of one object a run, with the same keys for every run: `run`, `dir`,
    /// `method` (summary), `attack`, `saliency`, `objective`, `mix`, `model` (null
    /// without config.toml), `status`, `error`, `clean_accuracy`, `robust` (one entry a
    /// column: `attack`, `norm`, `epsilon`, `label`, `accuracy`, null where the run
    /// lacks it), `alignment` and `train_seconds`.
    pub fn json(&self) -> serde_json::Value {
        let rows = self.rows.iter().map(|row| {
            let m = row.method.as_ref();
            let robust: Vec<serde_json::Value> = self
                .columns
                .iter()
                .map(|c| {
                    json!({
                        "attack": c.attack,
                        "norm": c.norm,
                        "epsilon": c.epsilon,
                        "label": c.label(),
                        "accuracy": Self::accuracy(row, c),
                    })
                })
                .collect();
            json!({
                "run": row.name,
                "dir": row.dir.display().to_string(),
                "method": m.map(Method::summary),
                "attack": m.map(|m| &m.attack),
                "saliency": m.map(|m| &m.saliency),
                "objective": m.map(|m| &m.objective),
                "mix": m.and_then(|m| m.mix.as_ref()),
                "model": m.map(|m| &m.model),
                "status": status_word(row.status),
                "error": row.error,
                "clean_accuracy": row.clean,
                "robust": robust,
                "alignment": row.alignment,
                "train_seconds": row.train_seconds,
            })
        });
        serde_json::Value::Array(rows.collect())
    }
}

/// The word `metrics.json` uses for `status`.
fn status_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "running",
        RunStatus::Completed => "completed",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Failed => "failed",
        RunStatus::Evaluated => "evaluated",
    }
}

/// `seconds` as `45s`, `8m 12s` or `1h 02m`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `field` as a CSV field: quoted (with doubled quotes) if it holds a comma, a quote or
/// a line break.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn robust(attack: &str, norm: &str, eps255: f64, accuracy: f64) -> RobustAccuracy {
        RobustAccuracy {
            attack: attack.into(),
            norm: norm.into(),
            epsilon: eps255 / 255.0,
            steps: 10,
            accuracy,
            ..Default::default()
        }
    }

    fn row(name: &str, status: RunStatus, robust: Vec<RobustAccuracy>) -> RunRow {
        RunRow {
            name: name.into(),
            dir: PathBuf::from(format!("runs/{name}")),
            method: Some(Method {
                attack: "sat".into(),
                saliency: vec!["masks".into()],
                objective: "ce".into(),
                mix: None,
                model: "small-cnn".into(),
            }),
            status,
            error: None,
            clean: Some(0.9876),
            robust,
            alignment: None,
            train_seconds: Some(492.4),
        }
    }

    /// Two runs: `a` with PGD at 8 and 2/255, `b` (running, no config.toml) with PGD at
    /// 4/255 and FGSM at 8/255, an alignment and no epochs.
    fn two_runs() -> Table {
        let a = row(
            "a",
            RunStatus::Completed,
            vec![
                robust("pgd", "linf", 8.0, 0.1),
                robust("pgd", "linf", 2.0, 0.5),
            ],
        );
        let mut b = row(
            "b",
            RunStatus::Running,
            vec![
                robust("pgd", "linf", 4.0, 0.25),
                robust("fgsm", "linf", 8.0, 0.375),
            ],
        );
        b.method = None;
        b.clean = None;
        b.alignment = Some(2.5);
        b.train_seconds = None;
        Table::new(vec![a, b], true)
    }

    #[test]
    fn columns_are_the_sorted_union_over_runs() {
        let labels: Vec<String> = two_runs().columns.iter().map(Column::label).collect();
        assert_eq!(
            labels,
            [
                "fgsm linf 8/255",
                "pgd linf 2/255",
                "pgd linf 4/255",
                "pgd linf 8/255"
            ]
        );
    }

    #[test]
    fn markdown_rows_are_exact_with_blanks_where_a_run_lacks_a_value() {
        let md = two_runs().markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(
            lines,
            [
                "| run | method | clean | fgsm linf 8/255 | pgd linf 2/255 | pgd linf 4/255 | pgd linf 8/255 | alignment | train time | status |",
                "|---|---|---|---|---|---|---|---|---|---|",
                "| a | attack=sat saliency=masks objective=ce model=small-cnn | 0.988 |  | 0.500 |  | 0.100 |  | 8m 12s | completed |",
                "| b |  |  | 0.375 |  | 0.250 |  | 2.500 |  | running |",
            ]
        );
    }

    #[test]
    fn csv_rows_are_exact_and_have_the_header_s_width() {
        let mut table = two_runs();
        table.rows[0].name = "a, \"the first\"".into();
        table.time = false;
        let csv = table.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "run,method,clean,fgsm linf 8/255,pgd linf 2/255,pgd linf 4/255,pgd linf 8/255,alignment,status",
                "\"a, \"\"the first\"\"\",attack=sat saliency=masks objective=ce model=small-cnn,0.9876,,0.5,,0.1,,completed",
                "b,,,0.375,,0.25,,2.5,running",
            ]
        );
    }

    #[test]
    fn without_alignments_there_is_no_alignment_column() {
        let table = Table::new(
            vec![row(
                "a",
                RunStatus::Failed,
                vec![robust("pgd", "l2", 127.5, 0.5)],
            )],
            true,
        );
        // An ℓ2 budget is a plain number, not levels of 1/255.
        assert_eq!(
            table.csv().lines().collect::<Vec<_>>(),
            [
                "run,method,clean,pgd l2 0.5,train_seconds,status",
                "a,attack=sat saliency=masks objective=ce model=small-cnn,0.9876,0.5,492.4,failed",
            ]
        );
    }

    #[test]
    fn json_has_the_same_keys_for_every_run_and_nulls_for_blanks() {
        let json = two_runs().json();
        let rows = json.as_array().unwrap();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&rows[0]), keys(&rows[1]));
        assert_eq!(rows[0]["saliency"], json!(["masks"]));
        assert_eq!(rows[1]["attack"], serde_json::Value::Null);
        assert_eq!(rows[1]["status"], "running");
        assert_eq!(rows[0]["robust"][1]["label"], "pgd linf 2/255");
        assert_eq!(rows[0]["robust"][1]["accuracy"], 0.5);
        assert_eq!(rows[0]["robust"][0]["accuracy"], serde_json::Value::Null);
        assert_eq!(rows[1]["robust"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(44.6), "45s");
        assert_eq!(duration(492.4), "8m 12s");
        assert_eq!(duration(3725.0), "1h 02m");
    }

    #[test]
    fn reading_a_run_is_tolerant_of_new_fields_and_names_the_directory_on_errors() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("r1");
        std::fs::create_dir(&dir).unwrap();
        let e = format!("{:#}", read_run(&dir, None).unwrap_err());
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("metrics.json"),
            "{e}"
        );
        std::fs::write(dir.join("metrics.json"), "{\"status\": \"completed\",").unwrap();
        let e = format!("{:#}", read_run(&dir, None).unwrap_err());
        assert!(
            e.contains("malformed") && e.contains(&dir.display().to_string()),
            "{e}"
        );
        std::fs::write(
            dir.join("metrics.json"),
            r#"{"status": "failed", "error": "boom", "robust_accuracy": [], "per_class": {"x": 1},
                "epochs": [{"epoch": 1, "seconds": 1.5}, {"epoch": 2, "seconds": 2.0}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "[train]\nattack = \"\"\nsaliency = []\nobjective = \"rrr\"\n[model]\narch = \"resnet18\"\n",
        )
        .unwrap();
        let run = read_run(&dir, Some("named".into())).unwrap();
        assert_eq!(run.name, "named");
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.error.as_deref(), Some("boom"));
        assert_eq!(run.train_seconds, Some(3.5));
        assert_eq!(
            run.method.unwrap().summary(),
            "attack=none objective=rrr model=resnet18"
        );
        std::fs::write(
            dir.join("config.toml"),
            "[train]\nattack = \"pgd\"\nsaliency = [\"masks\"]\nmix = \"sat\"\nobjective = \"ce\"\n",
        )
        .unwrap();
        let method = read_run(&dir, None).unwrap().method.unwrap();
        assert_eq!(
            method.summary(),
            "attack=pgd saliency=masks mix=sat objective=ce model="
        );
        assert!(std::fs::remove_file(dir.join("config.toml")).is_ok());
        assert_eq!(read_run(&dir, None).unwrap().method, None);
        std::fs::write(dir.join("config.toml"), "[train\n").unwrap();
        let e = format!("{:#}", read_run(&dir, None).unwrap_err());
        assert!(
            e.contains("config.toml") && e.contains(&dir.display().to_string()),
            "{e}"
        );
    }
}
