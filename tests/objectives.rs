//! Training objectives end to end: each standard objective trains, a weight of zero
//! gives exactly cross-entropy training, and objectives that break the contract are
//! refused with a message naming them.
use sat_tests::{metrics, plugin_dir, sat, tiny_run, write};
use std::path::Path;

fn checkpoint(cwd: &Path, name: &str) -> Vec<u8> {
    std::fs::read(cwd.join(format!("runs/{name}/checkpoint.safetensors"))).expect("checkpoint")
}

#[test]
fn every_standard_objective_trains_end_to_end() {
    let cwd = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("rrr", vec!["--plugin", "masks", "--objective", "rrr"]),
        ("ig", vec!["--objective", "input-gradient"]),
        ("ga", vec!["--attack", "fgsm", "--objective", "gradalign"]),
        ("tr", vec!["--attack", "trades", "--objective", "trades", "--set", "components.trades.steps=2"]),
        ("ls", vec!["--set", "components.ce.label_smoothing=0.1"]),
    ] {
        let set_name = format!("name={name}");
        let mut all = args.clone();
        all.extend(["--set", set_name.as_str()]);
        let out = tiny_run(cwd.path(), &all, &[]).success();
        let objective = args
            .iter()
            .position(|a| *a == "--objective")
            .map_or("ce", |i| args[i + 1]);
        assert!(
            out.stderr.contains(&format!("objective `{objective}`")),
            "{name}: {}",
            out.stderr
        );
        let m = metrics(&cwd.path().join(format!("runs/{name}")));
        assert_eq!(m["status"], "completed", "{name}: {m}");
        let loss = m["epochs"][0]["train_loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{name}: loss {loss}");
    }
}

#[test]
fn a_zero_weight_trains_exactly_as_cross_entropy() {
    let cwd = tempfile::tempdir().unwrap();
    let common = ["--plugin", "masks", "--set", "train.epochs=2"];
    let run = |name: &str, extra: &[&str]| {
        let mut args: Vec<&str> = common.to_vec();
        args.extend_from_slice(extra);
        let set_name = format!("name={name}");
        args.extend(["--set", set_name.as_str()]);
        tiny_run(cwd.path(), &args, &[]).success();
    };
    run("ce", &["--objective", "ce"]);
    run("rrr0", &["--objective", "rrr", "--set", "components.rrr.lambda=0.0"]);
    run("ig0", &["--objective", "input-gradient", "--set", "components.input-gradient.lambda=0.0"]);
    run("rrr1", &["--objective", "rrr"]);
    let ce = checkpoint(cwd.path(), "ce");
    assert_eq!(ce, checkpoint(cwd.path(), "rrr0"), "rrr with lambda 0 differs from ce");
    assert_eq!(ce, checkpoint(cwd.path(), "ig0"), "input-gradient with lambda 0 differs from ce");
    assert_ne!(ce, checkpoint(cwd.path(), "rrr1"), "rrr's penalty changed nothing");
}

fn faulty(cwd: &Path, objective: &str, name: &str) -> String {
    let dir = plugin_dir(&["sat_fixture_faulty"]);
    let set_name = format!("name={name}");
    let args = [
        "--plugin-dir",
        dir.path().to_str().unwrap(),
        "--objective",
        objective,
        "--set",
        set_name.as_str(),
    ];
    let err = tiny_run(cwd, &args, &[]).fails_with(&["libsat_fixture_faulty.so"]);
    assert_eq!(metrics(&cwd.join(format!("runs/{name}")))["status"], "failed");
    err
}

#[test]
fn objectives_that_break_the_contract_are_refused_by_name() {
    let cwd = tempfile::tempdir().unwrap();
    for (objective, needle) in [
        ("failing", "deliberate failure"),
        ("panicking", "deliberate panic in an objective"),
        ("nan-loss", "the training loss became NaN"),
        ("vector-loss", "expected a floating scalar"),
        ("detached-loss", "no gradient to the model's parameters"),
    ] {
        let err = faulty(cwd.path(), objective, objective);
        assert!(
            err.contains(&format!("objective `{objective}`")) && err.contains(needle),
            "{objective}: {err}"
        );
    }
}

#[test]
fn objective_configuration_errors_name_the_key() {
    let cwd = tempfile::tempdir().unwrap();
    // rrr needs saliency maps.
    tiny_run(cwd.path(), &["--objective", "rrr"], &[])
        .fails_with(&["objective `rrr` needs saliency maps", "--plugin masks"]);
    // An unknown objective, with the nearest name.
    tiny_run(cwd.path(), &["--objective", "trade"], &[])
        .fails_with(&["no objective component `trade`", "did you mean `trades`"]);
    // The `trades` attack and objective share [components.trades]: both parts' keys are
    // accepted, anything else is named with the accepted keys of both.
    let cfg = write(
        cwd.path(),
        "t.toml",
        "[train]\nattack = \"trades\"\nobjective = \"trades\"\n[components.trades]\nbeta = 1.0\nsteps = 2\nbetta = 3\n",
    );
    let err = tiny_run(cwd.path(), &["--config", &cfg], &[])
        .fails_with(&["t.toml:7:1", "unknown key `betta`", "did you mean `beta`"]);
    assert!(err.contains("steps") && err.contains("beta"), "{err}");
    // A value out of range is the plugin's error, pointing at the table.
    let cfg = write(cwd.path(), "l.toml", "[components.rrr]\nlambda = -1.0\n");
    tiny_run(cwd.path(), &["--config", &cfg], &[]).fails_with(&["l.toml:1:", "lambda"]);
}

#[test]
fn objectives_are_listed_with_their_kind_and_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    let out = sat(cwd.path(), &["plugins", "--json"], &[]).success();
    let items: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let objectives: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "objective")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    for name in ["ce", "trades", "rrr", "input-gradient", "gradalign"] {
        assert!(objectives.contains(&name), "{name} missing from {objectives:?}");
    }
    // `trades` is an attack and an objective: describe shows both.
    let out = sat(cwd.path(), &["plugins", "describe", "trades", "--json"], &[]).success();
    let both: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let kinds: Vec<&str> = both.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["attack", "objective"]);
    assert!(both[1]["default_config"].as_str().unwrap().contains("beta = 6.0"), "{both}");
}
