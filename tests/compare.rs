//! `sat-host compare`: hand-written run directories (compare only reads files) and one
//! real tiny run, compared as Markdown, CSV and JSON, with the SVG overlay.
use sat_tests::{sat, tiny_run, write};
use std::path::Path;

/// A run directory `root/name` with this `metrics.json` and `[train]` of config.toml.
fn hand_run(root: &Path, name: &str, metrics: &str, train: &str) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "metrics.json", metrics);
    write(
        &dir,
        "config.toml",
        &format!("[train]\n{train}\n[model]\narch = \"small-cnn\"\n"),
    );
    dir.to_string_lossy().into_owned()
}

/// Two runs: `done` (PGD at 2 and 8/255, FGSM at 8/255, a field compare does not know)
/// and `busy`, still running (PGD at 4/255 only, no clean accuracy yet).
fn two_hand_runs(root: &Path) -> (String, String) {
    let done = hand_run(
        root,
        "done",
        r#"{"status": "completed", "clean_accuracy": 0.9,
            "robust_accuracy": [
              {"attack": "pgd", "norm": "linf", "epsilon": 0.00784313725490196, "steps": 10, "accuracy": 0.6},
              {"attack": "pgd", "norm": "linf", "epsilon": 0.03137254901960784, "steps": 10, "accuracy": 0.2},
              {"attack": "fgsm", "norm": "linf", "epsilon": 0.03137254901960784, "steps": 1, "accuracy": 0.4}],
            "alignment": 0.75, "per_class": [{"class": 0, "accuracy": 1.0}],
            "epochs": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "images_per_sec": 10.0, "seconds": 30.0},
                       {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.7, "images_per_sec": 10.0, "seconds": 45.0}]}"#,
        "attack = \"sat\"\nsaliency = [\"masks\"]\nobjective = \"ce\"",
    );
    let busy = hand_run(
        root,
        "busy",
        r#"{"status": "running",
            "robust_accuracy": [
              {"attack": "pgd", "norm": "linf", "epsilon": 0.01568627450980392, "steps": 10, "accuracy": 0.35}],
            "epochs": []}"#,
        "attack = \"\"\nobjective = \"rrr\"",
    );
    (done, busy)
}

#[test]
fn hand_written_runs_compare_in_every_format() {
    let root = tempfile::tempdir().unwrap();
    let (done, busy) = two_hand_runs(root.path());
    // `busy` is live: its writer holds the run directory's lock (as sat-host run does).
    let writer = std::fs::File::create(Path::new(&busy).join(".lock")).unwrap();
    writer.lock().unwrap();
    let md = sat(root.path(), &["compare", &done, &busy], &[])
        .success()
        .stdout;
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert_eq!(
        lines[0],
        "| run | method | clean | fgsm linf 8/255 | pgd linf 2/255 | pgd linf 4/255 | pgd linf 8/255 | alignment | train time | status |"
    );
    assert_eq!(
        lines[2],
        "| done | attack=sat saliency=masks objective=ce model=small-cnn | 0.900 | 0.400 | 0.600 |  | 0.200 | 0.750 | 1m 15s | completed |"
    );
    assert_eq!(
        lines[3],
        "| busy | attack=none objective=rrr model=small-cnn |  |  |  | 0.350 |  |  |  | running |"
    );

    // CSV: every row as wide as the header; --names and --out.
    let out = root.path().join("table.csv");
    let out_s = out.to_str().unwrap();
    let printed = sat(
        root.path(),
        &[
            "compare", "--format", "csv", "--names", "A,B", "--out", out_s, &done, &busy,
        ],
        &[],
    )
    .success()
    .stdout;
    assert!(
        printed.is_empty(),
        "--out writes the table, not stdout: {printed}"
    );
    let csv = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows.iter().all(|r| r.len() == 10), "{csv}");
    assert_eq!(rows[1][0], "A");
    assert_eq!(rows[1][8], "75", "train seconds: the epochs' sum");
    assert_eq!((rows[2][0], rows[2][9]), ("B", "running"));

    // JSON: the values of the metrics files, under the same keys for both runs.
    let json = sat(
        root.path(),
        &["compare", "--format", "json", &done, &busy],
        &[],
    )
    .success()
    .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let keys = |r: &serde_json::Value| r.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&runs[0]), keys(&runs[1]));
    assert_eq!(runs[0]["clean_accuracy"], 0.9);
    assert_eq!(runs[0]["alignment"], 0.75);
    assert_eq!(runs[0]["train_seconds"], 75.0);
    assert_eq!(runs[0]["saliency"], serde_json::json!(["masks"]));
    assert_eq!(runs[1]["status"], "running");
    // Its writer gone without a word (the lock free, `running` on disk): compare records
    // the run as failed, with the reason.
    drop(writer);
    let json = sat(root.path(), &["compare", "--format", "json", &busy], &[])
        .success()
        .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["status"], "failed", "{json}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&busy).join("metrics.json")).unwrap())
            .unwrap();
    assert!(m["error"].as_str().unwrap().contains("found by sat-host compare"), "{m}");
    assert_eq!(runs[1]["clean_accuracy"], serde_json::Value::Null);
    let robust = |r: &serde_json::Value, label: &str| {
        r["robust"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == label)
            .map(|c| c["accuracy"].clone())
    };
    assert_eq!(robust(&runs[0], "pgd linf 8/255"), Some(0.2.into()));
    assert_eq!(robust(&runs[1], "pgd linf 4/255"), Some(0.35.into()));
    assert_eq!(
        robust(&runs[1], "pgd linf 8/255"),
        Some(serde_json::Value::Null)
    );
}

/// Whether `text` is well-formed as far as tags go: every opened element is closed in
/// order (self-closing ones count as both), and attribute values are quoted.
fn tags_balance(text: &str) -> bool {
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else {
            return false;
        };
        let tag = &rest[start + 1..start + len];
        rest = &rest[start + len + 1..];
        if !tag.matches('"').count().is_multiple_of(2) {
            return false;
        }
        let name = tag
            .trim_start_matches('/')
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        if tag.starts_with('/') {
            if open.pop().as_deref() != Some(name.as_str()) {
                return false;
            }
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    open.is_empty()
}

#[test]
fn the_svg_overlays_a_line_per_run_and_attack_and_names_every_run() {
    let root = tempfile::tempdir().unwrap();
    let (done, busy) = two_hand_runs(root.path());
    let svg_path = root.path().join("curves.svg");
    sat(
        root.path(),
        &[
            "compare",
            "--names",
            "SAT <masks>,RRR & co",
            "--svg",
            svg_path.to_str().unwrap(),
            &done,
            &busy,
        ],
        &[],
    )
    .success();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(!tags_balance("<svg><g></svg>") && !tags_balance("<svg x=\"1>"));
    assert!(svg.starts_with("<svg") && tags_balance(&svg), "{svg}");
    // done: pgd and fgsm; busy: pgd.
    assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
    assert!(svg.contains(">SAT &lt;masks&gt;</text>"), "{svg}");
    assert!(svg.contains(">RRR &amp; co</text>"), "{svg}");
}

#[test]
fn a_directory_without_metrics_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let (done, _) = two_hand_runs(root.path());
    let empty = root.path().join("not-a-run");
    std::fs::create_dir(&empty).unwrap();
    let empty_s = empty.to_str().unwrap();
    sat(root.path(), &["compare", &done, empty_s], &[]).fails_with(&[empty_s, "metrics.json"]);
    write(&empty, "metrics.json", "{\"status\": ");
    sat(root.path(), &["compare", &done, empty_s], &[]).fails_with(&[empty_s, "malformed"]);
}

#[test]
fn a_real_run_and_a_failed_one_compare() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(cwd.path(), &["--attack", "fgsm", "--set", "name=real"], &[]).success();
    let failed = hand_run(
        cwd.path(),
        "runs/failed",
        r#"{"status": "failed", "error": "out of memory", "robust_accuracy": [], "epochs": []}"#,
        "attack = \"pgd\"\nobjective = \"ce\"",
    );
    let json = sat(
        cwd.path(),
        &["compare", "--format", "json", "runs/real", &failed],
        &[],
    )
    .success()
    .stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let metrics = sat_tests::metrics(&cwd.path().join("runs/real"));
    assert_eq!(v[0]["run"], "real");
    assert_eq!(v[0]["attack"], "fgsm");
    assert_eq!(v[0]["status"], "completed");
    assert_eq!(v[0]["clean_accuracy"], metrics["clean_accuracy"]);
    assert_eq!(v[0]["robust"][0]["label"], "pgd linf 4/255");
    assert_eq!(
        v[0]["robust"][0]["accuracy"],
        metrics["robust_accuracy"][0]["accuracy"]
    );
    assert_eq!(v[0]["train_seconds"], metrics["epochs"][0]["seconds"]);
    assert_eq!(v[1]["status"], "failed");
    assert_eq!(v[1]["error"], "out of memory");
    assert_eq!(v[1]["robust"][0]["accuracy"], serde_json::Value::Null);
}
