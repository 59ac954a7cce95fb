//! TensorBoard event files: `sat-host run` writes them into the run directory, a resumed
//! run continues them in a file of its own, and `[report] tensorboard = false` turns them
//! off; the `tensorboard` package itself reads them back.
use sat_tests::{metrics, sat, target_dir, tiny_run};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// What `tests/pytorch/read_tensorboard.py` (the `tensorboard` package, as
/// `tensorboard --logdir RUNS` loads it) reads under `runs`.
fn read_back(runs: &Path) -> Value {
    let root = target_dir().join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-libtorch",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/pytorch/read_tensorboard.py"))
        .arg(runs)
        .output()
        .expect("run read_tensorboard.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "read_tensorboard.py failed (tensorboard missing? run scripts/setup-libtorch):\n{stderr}"
    );
    serde_json::from_slice(&out.stdout).expect("read_tensorboard.py prints JSON")
}

/// The event files in `dir`.
fn event_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("events.out.tfevents."))
        .collect();
    names.sort();
    names
}

/// Asserts that `series` (`[[step, value], …]` as read back) holds `expected` (step,
/// value) pairs, the values to float32 precision.
fn assert_series(tag: &str, series: &Value, expected: &[(u64, f64)]) {
    let got: Vec<(u64, f64)> = series
        .as_array()
        .unwrap_or_else(|| panic!("no scalars under {tag}"))
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        expected.iter().map(|p| p.0).collect::<Vec<_>>(),
        "{tag}: steps"
    );
    for ((_, a), (step, b)) in got.iter().zip(expected) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
            "{tag} at step {step}: {a} read back, {b} in metrics.json"
        );
    }
}

#[test]
fn event_files_hold_each_epoch_and_the_evaluation_across_a_resume() {
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    tiny_run(cwd, &["--set", "name=tb"], &[]).success();
    let dir = cwd.join("runs/tb");
    let first = metrics(&dir);
    assert_eq!(event_files(&dir).len(), 1);
    // One more epoch in a second process: a second file, sorted after the first.
    sat(
        cwd,
        &["run", "--resume", "runs/tb", "--set", "train.epochs=2"],
        &[],
    )
    .success();
    let second = metrics(&dir);
    assert_eq!(event_files(&dir).len(), 2);
    // Turned off: no event file.
    tiny_run(
        cwd,
        &["--set", "name=off", "--set", "report.tensorboard=false"],
        &[],
    )
    .success();
    assert!(event_files(&cwd.join("runs/off")).is_empty());

    let read = read_back(&cwd.join("runs"));
    let runs = read["runs"].as_object().unwrap();
    // `tensorboard --logdir runs` shows the run under its name, and only it.
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["tb"], "{read}");
    let tb = &runs["tb"];
    assert_eq!(tb["files"], 2);
    let scalars = tb["scalars"].as_object().unwrap();
    let epochs = second["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[0], first["epochs"][0], "the resumed run keeps epoch 1");
    let per_epoch = |key: &str| -> Vec<(u64, f64)> {
        epochs
            .iter()
            .map(|e| (e["epoch"].as_u64().unwrap(), e[key].as_f64().unwrap()))
            .collect()
    };
    for (tag, key) in [
        ("train/loss", "train_loss"),
        ("train/accuracy", "train_accuracy"),
        ("train/images_per_sec", "images_per_sec"),
        ("train/data_wait_share", "data_wait_share"),
    ] {
        assert_series(tag, &scalars[tag], &per_epoch(key));
    }
    // The constant schedule's rate ([train] lr's default).
    assert_series(
        "train/learning_rate",
        &scalars["train/learning_rate"],
        &[(1, 1e-3), (2, 1e-3)],
    );
    // Each process's evaluation, at the epoch it followed.
    let both = |f: &dyn Fn(&Value) -> f64| vec![(1, f(&first)), (2, f(&second))];
    assert_series(
        "eval/clean_accuracy",
        &scalars["eval/clean_accuracy"],
        &both(&|m| m["clean_accuracy"].as_f64().unwrap()),
    );
    let robust = "eval/robust_accuracy/pgd linf 4/255";
    assert_series(
        robust,
        &scalars[robust],
        &both(&|m| m["robust_accuracy"][0]["accuracy"].as_f64().unwrap()),
    );
    let mut expected = vec![
        "eval/clean_accuracy",
        robust,
        "train/accuracy",
        "train/data_wait_share",
        "train/images_per_sec",
        "train/learning_rate",
        "train/loss",
    ];
    if second["alignment"].is_number() {
        assert_series(
            "eval/alignment",
            &scalars["eval/alignment"],
            &both(&|m| m["alignment"].as_f64().unwrap()),
        );
        expected.push("eval/alignment");
    }
    expected.sort_unstable();
    assert_eq!(scalars.keys().collect::<Vec<_>>(), expected, "{read}");
}
