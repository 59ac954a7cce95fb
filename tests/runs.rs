//! Training runs end to end, and plugins that fail mid-run.
use sat_tests::{metrics, plugin_dir, sat, tiny_run};
use std::path::Path;

#[test]
fn masks_with_pgd_trains_and_writes_the_run_directory() {
    let cwd = tempfile::tempdir().unwrap();
    let out = tiny_run(
        cwd.path(),
        &["--plugin", "masks", "--attack", "pgd", "--set", "name=mp"],
        &[],
    )
    .success();
    let dir = cwd.path().join("runs/mp");
    for file in [
        "config.toml",
        "log.txt",
        "metrics.json",
        "metrics.csv",
        "robust_curve.csv",
        "robust_curve.svg",
        "checkpoint.safetensors",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing; stderr:\n{}",
            out.stderr
        );
    }
    let m = metrics(&dir);
    assert_eq!(m["status"], "completed");
    let clean = m["clean_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&clean));
    let robust = m["robust_accuracy"].as_array().unwrap();
    assert_eq!(robust.len(), 1);
    assert_eq!(robust[0]["attack"], "pgd");
    assert_eq!(robust[0]["norm"], "linf");
    assert!((robust[0]["epsilon"].as_f64().unwrap() - 4.0 / 255.0).abs() < 1e-12);
    assert_eq!(m["epochs"].as_array().unwrap().len(), 1);
    // The resolved config records the command-line choices.
    let resolved = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(
        resolved.contains("attack = \"pgd\"") && resolved.contains("saliency = [\"masks\"]"),
        "{resolved}"
    );
    assert!(std::fs::read_to_string(dir.join("log.txt"))
        .unwrap()
        .contains("epoch 1/1"));
    // A second run with the same name does not overwrite the first.
    tiny_run(cwd.path(), &["--set", "name=mp"], &[]).success();
    assert!(cwd.path().join("runs/mp-2/metrics.json").exists());
}

#[test]
fn sat_with_the_third_party_example_plugin_trains() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["centre_prior"]);
    let d = dir.path().to_str().unwrap();
    tiny_run(
        cwd.path(),
        &[
            "--plugin-dir",
            d,
            "--plugin",
            "centre-prior",
            "--attack",
            "sat",
            "--set",
            "name=cp",
        ],
        &[],
    )
    .success();
    assert_eq!(metrics(&cwd.path().join("runs/cp"))["status"], "completed");
}

#[test]
fn same_seed_same_results() {
    let cwd = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        // On the CPU even where a GPU is present: cuDNN's kernels are not deterministic.
        tiny_run(
            cwd.path(),
            &[
                "--set",
                "device=\"cpu\"",
                "--plugin",
                "boxes",
                "--attack",
                "sat",
                "--set",
                &format!("name={name}"),
            ],
            // One intra-op thread: with two, libtorch's CPU kernels summed in another
            // order under load once (1e-7 in the loss); the comparison is bit for bit.
            &[("OMP_NUM_THREADS", "1")],
        )
        .success();
    }
    let (a, b) = (
        metrics(&cwd.path().join("runs/a")),
        metrics(&cwd.path().join("runs/b")),
    );
    assert_eq!(a["epochs"][0]["train_loss"], b["epochs"][0]["train_loss"]);
    assert_eq!(a["robust_accuracy"], b["robust_accuracy"]);
    let ckpt = |n: &str| {
        std::fs::read(cwd.path().join(format!("runs/{n}/checkpoint.safetensors"))).unwrap()
    };
    assert_eq!(ckpt("a"), ckpt("b"), "identical weights");
}

fn faulty(cwd: &Path, extra: &[&str]) -> String {
    let dir = plugin_dir(&["sat_fixture_faulty"]);
    let mut args = vec!["--plugin-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    tiny_run(cwd, &args, &[]).fails_with(&["libsat_fixture_faulty.so"])
}

#[test]
fn a_panicking_plugin_becomes_an_error_naming_it() {
    let cwd = tempfile::tempdir().unwrap();
    let err = faulty(
        cwd.path(),
        &[
            "--plugin",
            "panicking",
            "--attack",
            "sat",
            "--set",
            "name=p",
        ],
    );
    assert!(
        err.contains("saliency source `panicking`")
            && err.contains("deliberate panic in a saliency source"),
        "{err}"
    );
    let m = metrics(&cwd.path().join("runs/p"));
    assert_eq!(m["status"], "failed");
    assert!(
        m["error"].as_str().unwrap().contains("deliberate panic"),
        "{m}"
    );
    let err = faulty(
        cwd.path(),
        &["--plugin", "constructor-panic", "--attack", "sat"],
    );
    assert!(err.contains("deliberate panic in a constructor"), "{err}");
}

#[test]
fn a_failing_plugin_stops_the_run_with_its_message() {
    let cwd = tempfile::tempdir().unwrap();
    let err = faulty(cwd.path(), &["--plugin", "failing", "--attack", "sat"]);
    assert!(
        err.contains("saliency source `failing`") && err.contains("deliberate failure"),
        "{err}"
    );
}

#[test]
fn contract_breaking_outputs_are_rejected() {
    let cwd = tempfile::tempdir().unwrap();
    let err = faulty(cwd.path(), &["--plugin", "wrong-shape", "--attack", "sat"]);
    assert!(
        err.contains("returned a map of shape") && err.contains("expected [32, 1 or 3, 32, 32]"),
        "{err}"
    );
    let err = faulty(cwd.path(), &["--attack", "out-of-budget"]);
    assert!(
        err.contains("attack `out-of-budget`") && err.contains("beyond its budget"),
        "{err}"
    );
    let err = faulty(cwd.path(), &["--plugin", "nan-map", "--attack", "sat"]);
    assert!(
        err.contains("saliency source `nan-map`") && err.contains("NaN or infinite values"),
        "{err}"
    );
    let err = faulty(cwd.path(), &["--plugin", "double-map", "--attack", "sat"]);
    assert!(
        err.contains("saliency source `double-map`")
            && err.contains("returned dtype Double; expected Float"),
        "{err}"
    );
    let err = faulty(cwd.path(), &["--attack", "unclamped"]);
    assert!(
        err.contains("attack `unclamped`") && err.contains("outside [0, 1]"),
        "{err}"
    );
}

#[test]
fn ctrl_c_keeps_the_finished_epochs_and_exits_130() {
    use std::process::Stdio;
    let cwd = tempfile::tempdir().unwrap();
    let child = sat_tests::spawn_sat(
        cwd.path(),
        &[
            "run",
            "--set",
            "name=int",
            "--set",
            "train.epochs=1000",
            "--set",
            "data.train_size=64",
            "--set",
            "train.batch_size=32",
            "--set",
            "model.width=4",
        ],
        Stdio::piped(),
    );
    let checkpoint = cwd.path().join("runs/int/checkpoint.safetensors");
    sat_tests::wait_for_file(&checkpoint, 120);
    sat_tests::interrupt(child);
    let m = metrics(&cwd.path().join("runs/int"));
    assert_eq!(m["status"], "interrupted");
    assert!(!m["epochs"].as_array().unwrap().is_empty());
    assert!(
        checkpoint.is_file(),
        "the last finished epoch's checkpoint is kept"
    );
}

#[test]
fn sat_plus_pgd_and_sat_plus_trades_train_end_to_end() {
    let cwd = tempfile::tempdir().unwrap();
    let out = tiny_run(
        cwd.path(),
        &[
            "--plugin",
            "masks",
            "--attack",
            "pgd",
            "--set",
            "train.mix=sat",
            "--set",
            "name=sp",
        ],
        &[],
    )
    .success();
    assert!(
        out.stderr.contains("or `sat` with probability 0.5"),
        "{}",
        out.stderr
    );
    assert_eq!(metrics(&cwd.path().join("runs/sp"))["status"], "completed");
    let out = tiny_run(
        cwd.path(),
        &[
            "--plugin",
            "boxes",
            "--attack",
            "trades",
            "--set",
            "train.mix=sat",
            "--objective",
            "trades",
        ]
        .iter()
        .chain(&[
            "--set",
            "components.trades.beta=1.0",
            "--set",
            "components.trades.steps=2",
            "--set",
            "name=st",
        ])
        .copied()
        .collect::<Vec<_>>(),
        &[],
    )
    .success();
    assert!(
        out.stderr.contains("objective `trades`"),
        "{}",
        out.stderr
    );
    assert_eq!(metrics(&cwd.path().join("runs/st"))["status"], "completed");
}

#[test]
fn the_mixing_coin_follows_its_probability() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["sat_fixture_faulty"]);
    let d = dir.path().to_str().unwrap();
    let mixed = |p: &str| {
        tiny_run(
            cwd.path(),
            &[
                "--plugin-dir",
                d,
                "--attack",
                "noise",
                "--set",
                "train.mix=out-of-budget",
                "--set",
                &format!("train.mix_probability={p}"),
            ],
            &[],
        )
    };
    // Never drawn: the faulty attack is built but not used.
    mixed("0.0").success();
    // Always drawn: its first batch is rejected.
    let err = mixed("1.0").fails_with(&["attack `out-of-budget`", "beyond its budget"]);
    let error_line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(!error_line.contains("noise"), "{error_line}");
    tiny_run(cwd.path(), &["--set", "train.mix=sat"], &[])
        .fails_with(&["needs an attack to mix with"]);
}

#[test]
fn eval_writes_the_schema_and_attack_strengths_are_ordered() {
    let cwd = tempfile::tempdir().unwrap();
    // A model trained enough to be right on most test images (3 classes, ~10 s).
    let train: Vec<&str> = [
        "name=ev",
        "data.train_size=768",
        "data.test_size=128",
        "data.classes=3",
        "train.epochs=4",
        "train.batch_size=64",
        "train.lr=0.003",
        "model.width=16",
        "components.pgd.steps=2",
        "eval.components.pgd.steps=7",
    ]
    .iter()
    .flat_map(|s| ["--set", s])
    .collect();
    tiny_run(cwd.path(), &train, &[]).success();
    let dir = cwd.path().join("runs/ev");
    let trained = metrics(&dir);
    assert_eq!(
        trained["robust_accuracy"][0]["steps"], 7,
        "evaluation settings apply to evaluation"
    );
    let run = dir.to_str().unwrap();
    let out = sat_tests::sat(
        cwd.path(),
        &[
            "eval", "--run", run, "--attack", "fgsm", "--attack", "pgd", "--attack", "apgd-ce",
            "--eps", "8/255",
        ]
        .iter()
        .chain(&[
            "--set",
            "components.apgd-ce.steps=20",
            "--set",
            "eval.max_samples=0",
        ])
        .copied()
        .collect::<Vec<_>>(),
        &[],
    )
    .success();
    assert!(out.stdout.contains("apgd-ce"), "{}", out.stdout);
    let m = metrics(&dir);
    assert_eq!(m["epochs"], trained["epochs"], "training history is kept");
    let clean = m["clean_accuracy"].as_f64().unwrap();
    assert!(
        clean > 0.5,
        "the model learned something (3 classes): {clean}"
    );
    let acc = |attack: &str| {
        let r = m["robust_accuracy"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["attack"] == attack)
            .unwrap();
        assert_eq!(r["norm"], "linf");
        assert!((r["epsilon"].as_f64().unwrap() - 8.0 / 255.0).abs() < 1e-12);
        r["accuracy"].as_f64().unwrap()
    };
    let (fgsm, pgd, apgd) = (acc("fgsm"), acc("pgd"), acc("apgd-ce"));
    assert!(
        pgd <= fgsm && fgsm <= clean,
        "clean {clean} >= fgsm {fgsm} >= pgd {pgd}"
    );
    assert!(apgd <= pgd, "apgd-ce {apgd} <= pgd {pgd}");
    let curve = std::fs::read_to_string(dir.join("robust_curve.csv")).unwrap();
    assert_eq!(curve.lines().count(), 4, "{curve}");
    assert!(std::fs::read_to_string(dir.join("robust_curve.svg"))
        .unwrap()
        .contains("apgd-ce (linf)"));
    // The breakdown: per class, confusion matrix, norms; the worst class in the summary.
    assert_eq!(m["class_names"].as_array().unwrap().len(), 3);
    assert_eq!(m["clean_per_class"].as_array().unwrap().len(), 3);
    for r in m["robust_accuracy"].as_array().unwrap() {
        check_breakdown(r, 3);
        assert!(r.get("targeted").is_none(), "untargeted: no success rate");
    }
    assert_eq!(out.stdout.matches("worst class").count(), 3, "{}", out.stdout);
    targeted_pgd_reaches_the_least_likely_class(cwd.path(), &dir);
}

/// Targeted PGD towards the least likely class (never the label, and not what the model
/// predicts on its own: the hits are the attack's doing) on the trained run `dir`.
fn targeted_pgd_reaches_the_least_likely_class(cwd: &Path, dir: &Path) {
    let out = sat_tests::sat(
        cwd,
        &[
            "eval",
            "--run",
            dir.to_str().unwrap(),
            "--attack",
            "pgd",
            "--eps",
            "8/255",
            "--set",
            "eval.components.pgd.target=\"least-likely\"",
        ],
        &[],
    )
    .success();
    assert!(out.stdout.contains("targeted success"), "{}", out.stdout);
    let m = metrics(dir);
    let r = &m["robust_accuracy"][0];
    check_breakdown(r, 3);
    let t = &r["targeted"];
    let (rate, successes, evaluated) = (
        t["rate"].as_f64().unwrap(),
        t["successes"].as_u64().unwrap(),
        t["evaluated"].as_u64().unwrap(),
    );
    assert_eq!(
        evaluated,
        r["samples"].as_u64().unwrap(),
        "least-likely targets are never the label"
    );
    assert!(successes <= evaluated);
    assert!(rate > 0.0 && rate <= 1.0, "{t}");
    assert!((rate - successes as f64 / evaluated as f64).abs() < 1e-12);
    let curve = std::fs::read_to_string(dir.join("robust_curve.csv")).unwrap();
    let row: Vec<&str> = curve.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row.len(), 8, "{curve}");
    assert_eq!(row[7].parse::<f64>().unwrap(), rate);
}

/// Data order and augmentation have random streams of their own: with one seed,
/// standard training, SAT and SAT mixed into PGD (which draws a coin per batch) see the
/// same batches and crops in every epoch; another seed sees others.
#[test]
fn one_seed_gives_the_same_data_whatever_the_training_mode() {
    let cwd = tempfile::tempdir().unwrap();
    let digests = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--set",
            "train.epochs=2",
            "--set",
            "eval.attacks=[]",
            "--set",
        ];
        let name_set = format!("name={name}");
        args.push(&name_set);
        args.extend_from_slice(extra);
        tiny_run(cwd.path(), &args, &[]).success();
        let m = metrics(&cwd.path().join("runs").join(name));
        let epochs = m["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        epochs
            .iter()
            .map(|e| {
                let d = e["data_digest"].as_str().expect("a data digest per epoch");
                assert!(
                    d.len() == 16 && d.chars().all(|c| c.is_ascii_hexdigit()),
                    "{d}"
                );
                d.to_owned()
            })
            .collect()
    };
    let standard = digests("standard", &[]);
    assert_ne!(standard[0], standard[1], "each epoch has its own order");
    let sat = digests("sat", &["--plugin", "masks", "--attack", "sat"]);
    assert_eq!(standard, sat);
    let mixed = digests(
        "mixed",
        &[
            "--plugin",
            "masks",
            "--attack",
            "pgd",
            "--set",
            "train.mix=sat",
        ],
    );
    assert_eq!(standard, mixed);
    let other = digests("other-seed", &["--set", "seed=1"]);
    assert_ne!(standard[0], other[0]);
    assert_ne!(standard[1], other[1]);
}

/// The figures of one `robust_accuracy` record agree with each other: the per-class
/// accuracies weighted by the class counts give the accuracy, the confusion matrix's rows
/// sum to the class counts and its diagonal over its total is the accuracy, and the
/// misclassified images are the off-diagonal ones.
fn check_breakdown(r: &serde_json::Value, classes: usize) {
    let what = format!("{} at {}", r["attack"], r["epsilon"]);
    let accuracy = r["accuracy"].as_f64().unwrap();
    let samples = r["samples"].as_u64().unwrap();
    let counts: Vec<u64> = r["class_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(counts.len(), classes, "{what}");
    assert_eq!(counts.iter().sum::<u64>(), samples, "{what}");
    let per_class = r["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), classes, "{what}");
    let weighted: f64 = per_class
        .iter()
        .zip(&counts)
        .map(|(a, &n)| a.as_f64().unwrap_or(0.0) * n as f64)
        .sum::<f64>()
        / samples as f64;
    assert!(
        (weighted - accuracy).abs() < 1e-9,
        "{what}: {weighted} vs {accuracy}"
    );
    let rows = r["confusion"].as_array().unwrap();
    assert_eq!(rows.len(), classes, "{what}");
    let mut diagonal = 0;
    for (c, row) in rows.iter().enumerate() {
        let row: Vec<u64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(row.len(), classes, "{what}");
        assert_eq!(row.iter().sum::<u64>(), counts[c], "{what}: row {c}");
        diagonal += row[c];
    }
    assert!(
        (diagonal as f64 / samples as f64 - accuracy).abs() < 1e-12,
        "{what}"
    );
    let misclassified = r["misclassified"].as_u64().unwrap_or(0);
    assert_eq!(misclassified, samples - diagonal, "{what}");
    let clean = r["clean_per_class"].as_array().unwrap();
    assert_eq!(clean.len(), classes, "{what}");
    assert!(clean
        .iter()
        .all(|a| a.is_null() || (0.0..=1.0).contains(&a.as_f64().unwrap())));
    // The medians are over the images the attack fooled (right before, wrong after):
    // never 0, which images already wrong before the attack would have contributed.
    let fooled = r["fooled"].as_u64().unwrap_or(0);
    assert!(fooled <= misclassified, "{what}");
    assert_eq!(r["median_linf"].is_null(), fooled == 0, "{what}");
    if fooled > 0 {
        let linf = r["median_linf"].as_f64().unwrap();
        let eps = r["epsilon"].as_f64().unwrap();
        assert!(
            linf > 0.0 && linf <= eps + 1e-6,
            "{what}: median linf {linf}"
        );
        assert!(r["median_l2"].as_f64().unwrap() >= linf, "{what}");
    }
}

/// An ℓ2 budget is a radius, not a count of intensity levels: it is printed as a plain
/// number (`eps 1`), never as `255/255` (issue 21), in the log, the summary and compare.
#[test]
fn l2_budgets_are_printed_as_plain_numbers() {
    let cwd = tempfile::tempdir().unwrap();
    let out = tiny_run(
        cwd.path(),
        &[
            "--set", "name=l2", "--set", "eval.attacks=[\"pgd\"]", "--set",
            "components.pgd.norm=\"l2\"", "--set", "eval.epsilons=[0.5, 1.0]", "--set",
            "components.pgd.step_size=0.25",
        ],
        &[],
    )
    .success();
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("pgd (l2, eps 1, 1 steps)") && text.contains("l2   eps 1 "), "{text}");
    assert!(!text.contains("255/255") && !text.contains("128/255"), "{text}");
    let table = sat(cwd.path(), &["compare", "runs/l2"], &[]).success().stdout;
    assert!(table.contains("pgd l2 0.5") && table.contains("pgd l2 1 "), "{table}");
}
