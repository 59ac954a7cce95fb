//! sat's AutoAttack family against torchattacks 3.5.1: `tests/pytorch/autoattack_reference.py`
//! trains a tiny CNN on a synthetic CIFAR-10-format data set and measures torchattacks'
//! robust accuracy per attack; `sat-host eval` attacks the same TorchScript model on the
//! same images with each sat component configured to torchattacks' settings, and every
//! robust accuracy (and the clean one) must agree within [`TOLERANCE`].
//!
//! torchattacks' `AutoAttack` passes no `steps` to its attacks, so APGD, APGD-T and FAB
//! run its default 10 steps (the original AutoAttack: 100), APGD-T and FAB-T target the
//! `classes − 1 = 9` other classes and Square makes 5000 queries: the sat configurations
//! below say so explicitly.
//!
//! Environment (for `scripts/crosscheck-autoattack`, which runs this at full size):
//! `SAT_XCHECK_SAMPLES` (test images, default 500), `SAT_XCHECK_SEEDS` (torchattacks
//! seeds, space-separated, default `0`; the first is the reference, the others measure
//! its seed-to-seed spread), `SAT_XCHECK_OUT` (keep everything in this directory instead
//! of a temporary one), `SAT_XCHECK_TABLE` (also write the markdown table to this file).
use sat_tests::{metrics, sat};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest accepted |sat − torchattacks| of an accuracy: 0.5 point (2.5 images of 500).
const TOLERANCE: f64 = 0.005;

/// One comparison: a case of the reference script and the sat attack configured alike.
struct Case {
    /// The case's name in `reference.json` (and the script's `--attacks`).
    name: &'static str,
    /// The sat attack component.
    component: &'static str,
    /// `"linf"` or `"l2"`; `epsilon` comes from `reference.json`.
    norm: &'static str,
    /// `[components.<component>]` keys besides `norm` and `epsilon`: torchattacks'
    /// effective settings of the case.
    keys: &'static str,
}

/// Every case, in the order of the table. The settings mirror torchattacks' (see the
/// reference script's `CASES`).
const CASES: &[Case] = &[
    Case {
        name: "apgd-ce-linf",
        component: "apgd-ce",
        norm: "linf",
        keys: "steps = 10",
    },
    Case {
        name: "apgd-ce-l2",
        component: "apgd-ce",
        norm: "l2",
        keys: "steps = 10",
    },
    Case {
        name: "apgd-t-linf",
        component: "apgd-t",
        norm: "linf",
        keys: "steps = 10\ntarget_classes = 9",
    },
    Case {
        name: "fab-t-linf",
        component: "fab-t",
        norm: "linf",
        keys: "steps = 10\ntarget_classes = 9",
    },
    Case {
        // `seed` reseeds libtorch's generator per call as torchattacks' does: with the
        // reference's seed the random search draws the same squares.
        name: "square-linf",
        component: "square",
        norm: "linf",
        keys: "queries = 5000\nseed = {seed}",
    },
    Case {
        // torchattacks' CW: c = 1 without binary search, κ = 0, 50 Adam steps of 0.01;
        // unbounded, so the reference counts perturbations above ε (ℓ2) as failures.
        name: "cw-l2",
        component: "cw-l2",
        norm: "l2",
        keys: "confidence = 0.0\ninitial_c = 1.0\nbinary_search_steps = 1\nsteps = 50\nlearning_rate = 0.01",
    },
    Case {
        // APGD-CE, APGD-T, FAB-T, Square, each on what the previous ones left robust.
        name: "autoattack-linf",
        component: "autoattack",
        norm: "linf",
        keys: "version = \"standard\"\nsteps = 10\nqueries = 5000\ntarget_classes = 9",
    },
    Case {
        name: "autoattack-l2",
        component: "autoattack",
        norm: "l2",
        keys: "version = \"standard\"\nsteps = 10\nqueries = 5000\ntarget_classes = 9",
    },
];

/// The keys a case's sat table sets (besides `epsilon`).
fn case_keys(case: &Case) -> Vec<String> {
    let mut keys: Vec<String> = case
        .keys
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    // CW-L2 has no `norm` key: it is ℓ2 only.
    if case.norm != "linf" && case.component != "cw-l2" {
        keys.push("norm".into());
    }
    keys
}

/// The registered attack components and their keys, from `sat-host plugins --json`.
fn registered_attacks(cwd: &Path) -> BTreeMap<String, Vec<String>> {
    let out = sat(cwd, &["plugins", "--json"], &[]).success();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("plugins --json");
    let mut attacks = BTreeMap::new();
    for e in list.as_array().expect("a list of components") {
        if e["kind"] == "attack" {
            let keys = e["keys"].as_array().expect("keys");
            attacks.insert(
                e["name"].as_str().expect("name").to_string(),
                keys.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect(),
            );
        }
    }
    attacks
}

/// Why sat cannot run `case` yet (its component is missing or lacks keys), if so.
fn missing(case: &Case, attacks: &BTreeMap<String, Vec<String>>) -> Option<String> {
    let Some(keys) = attacks.get(case.component) else {
        return Some(format!("attack `{}` is not registered", case.component));
    };
    let absent: Vec<String> = case_keys(case)
        .into_iter()
        .filter(|k| !keys.contains(k))
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "attack `{}` has no key {}",
            case.component,
            absent.join(", ")
        )
    })
}

/// A path as a TOML basic string.
fn toml_path(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

/// The sat config of `case` at `epsilon` over the script's data and model in `dir`.
fn config(
    dir: &Path,
    case: &Case,
    epsilon: f64,
    (batch_size, seed): (u64, u64),
    attacks: &BTreeMap<String, Vec<String>>,
) -> String {
    // `norm` only where the component has the key: ℓ∞ is every attack's default.
    let has_norm = attacks[case.component].iter().any(|k| k == "norm");
    let norm = if has_norm {
        format!("norm = \"{}\"\n", case.norm)
    } else {
        String::new()
    };
    format!(
        r#"# {name}: sat's `{component}` set to torchattacks 3.5.1's settings
# (torchattacks' AutoAttack runs 10 steps, targets classes - 1 = 9 classes, Square 5000 queries).
name = "{name}"
seed = 0
[data]
dataset = "cifar10"
root = {root}
# The files are 32 x 32; the reference resizes them to 16 x 16 exactly as sat does.
image_size = 16
[model]
torchscript = {model}
[eval]
attacks = ["{component}"]
epsilons = [{epsilon:?}]
# Every test image (the file holds exactly the reference's), in the reference's batches.
max_samples = 0
batch_size = {batch_size}
alignment = false
[components.{component}]
{norm}{keys}
"#,
        name = case.name,
        component = case.component,
        root = toml_path(&dir.join("cifar10")),
        model = toml_path(&dir.join("model.pt")),
        keys = case.keys.replace("{seed}", &seed.to_string()),
    )
}

/// Runs the reference script into `dir` for `cases`; returns `reference.json`.
fn reference(dir: &Path, cases: &[&Case], samples: &str, seeds: &str) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-libtorch",
        python.display()
    );
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("tests/pytorch/autoattack_reference.py"))
        .arg(dir)
        .args(["--samples", samples, "--seeds"])
        .args(seeds.split_whitespace())
        .arg("--attacks")
        .args(cases.iter().map(|c| c.name));
    let out = cmd.output().expect("run the reference script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "autoattack_reference.py failed (torchattacks missing? run scripts/setup-libtorch):\n{stderr}"
    );
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("valid reference.json")
}

/// sat's clean and robust accuracy for `case`, from `sat-host eval`.
fn sat_accuracy(dir: &Path, case: &Case, config_text: &str) -> (f64, f64) {
    let file = dir.join(format!("{}.toml", case.name));
    std::fs::write(&file, config_text).expect("write config");
    let out_dir = dir.join(format!("sat-{}", case.name));
    let _ = std::fs::remove_dir_all(&out_dir);
    let (file_arg, out_arg) = (file.display().to_string(), out_dir.display().to_string());
    sat(
        dir,
        &["eval", "--config", &file_arg, "--out", &out_arg],
        &[],
    )
    .success();
    let m = metrics(&out_dir);
    let robust = m["robust_accuracy"].as_array().expect("robust_accuracy");
    assert_eq!(robust.len(), 1, "{m}");
    assert_eq!(robust[0]["attack"], case.component, "{m}");
    assert_eq!(robust[0]["norm"], case.norm, "{m}");
    let clean = m["clean_accuracy"].as_f64().expect("clean_accuracy");
    (clean, robust[0]["accuracy"].as_f64().expect("accuracy"))
}

/// A markdown table row.
fn row(what: &str, torchattacks: f64, sat: f64, spread: Option<f64>) -> String {
    let spread = spread.map_or("–".into(), |s| format!("{s:.3}"));
    format!(
        "| {what} | {torchattacks:.3} | {sat:.3} | {:+.3} | {spread} |",
        sat - torchattacks
    )
}

#[test]
fn sat_matches_torchattacks_on_the_autoattack_family() {
    let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
    let (samples, seeds) = (
        env("SAT_XCHECK_SAMPLES", "500"),
        env("SAT_XCHECK_SEEDS", "0"),
    );
    let temp = tempfile::tempdir().expect("temp dir");
    let dir: PathBuf = std::env::var_os("SAT_XCHECK_OUT").map_or(temp.path().into(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("output directory");

    let attacks = registered_attacks(&dir);
    let mut failures = Vec::new();
    let mut runnable = Vec::new();
    for case in CASES {
        match missing(case, &attacks) {
            None => runnable.push(case),
            Some(why) => failures.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(!runnable.is_empty(), "no case can run: {failures:?}");
    let reference = reference(&dir, &runnable, &samples, &seeds);
    let batch_size = reference["batch_size"].as_u64().expect("batch_size");
    let ta_clean = reference["clean_accuracy"]
        .as_f64()
        .expect("clean_accuracy");

    let mut table = vec![
        format!("| attack ({samples} images) | torchattacks 3.5.1 | sat | difference | torchattacks seed spread ({seeds}) |"),
        "|---|---|---|---|---|".to_string(),
    ];
    let mut sat_clean = None;
    for case in &runnable {
        let r = &reference["attacks"][case.name];
        let eps = r["epsilon"].as_f64().expect("epsilon");
        assert_eq!(r["norm"], case.norm, "{}: the script's norm", case.name);
        let first_seed: u64 = seeds
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("SAT_XCHECK_SEEDS starts with an integer seed");
        let text = config(&dir, case, eps, (batch_size, first_seed), &attacks);
        let (clean, robust) = sat_accuracy(&dir, case, &text);
        sat_clean.get_or_insert(clean);
        let ta = r["robust_accuracy"].as_f64().expect("robust_accuracy");
        let label = format!("{} ({}, ε = {})", case.name, case.norm, epsilon_text(eps));
        table.push(row(&label, ta, robust, r["seed_spread"].as_f64()));
        if (robust - ta).abs() > TOLERANCE {
            failures.push(format!(
                "{}: sat {robust:.4}, torchattacks {ta:.4}",
                case.name
            ));
        }
    }
    let sat_clean = sat_clean.expect("at least one case ran");
    table.insert(2, row("clean", ta_clean, sat_clean, None));
    if (sat_clean - ta_clean).abs() > TOLERANCE {
        failures.push(format!(
            "clean: sat {sat_clean:.4}, torchattacks {ta_clean:.4}"
        ));
    }
    let table = table.join("\n") + "\n";
    println!("{table}");
    if let Some(path) = std::env::var_os("SAT_XCHECK_TABLE") {
        std::fs::write(path, &table).expect("write the table");
    }
    assert!(
        failures.is_empty(),
        "beyond {TOLERANCE}:\n{}\n{table}",
        failures.join("\n")
    );
}

/// ε as `k/255` when it is one, else as a decimal.
fn epsilon_text(eps: f64) -> String {
    let k = eps * 255.0;
    if (k - k.round()).abs() < 1e-9 {
        format!("{}/255", k.round())
    } else {
        format!("{eps}")
    }
}
