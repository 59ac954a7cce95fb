//! Bad configurations and names give errors with file, line, column, key and a suggestion.
use sat_tests::{sat, tiny_run, write};

#[test]
fn malformed_toml_names_file_line_and_column() {
    let cwd = tempfile::tempdir().unwrap();
    let cfg = write(
        cwd.path(),
        "bad.toml",
        "name = \"x\"\n\n[train\nepochs = 1\n",
    );
    let err = sat(cwd.path(), &["run", "--config", &cfg], &[]).fails_with(&["bad.toml:3:"]);
    assert!(
        !cwd.path().join("runs").exists(),
        "nothing is created for a bad config: {err}"
    );
}

#[test]
fn unknown_key_is_named_with_the_nearest_one() {
    let cwd = tempfile::tempdir().unwrap();
    let cfg = write(
        cwd.path(),
        "typo.toml",
        "[train]\nepochs = 1\nbatch_sise = 8\n",
    );
    sat(cwd.path(), &["run", "--config", &cfg], &[]).fails_with(&[
        "typo.toml:3:1",
        "unknown key `batch_sise`",
        "did you mean `batch_size`",
    ]);
    sat(cwd.path(), &["run", "--set", "train.lr_rate=0.1"], &[])
        .fails_with(&["--set", "`lr_rate`"]);
}

#[test]
fn unknown_component_key_points_into_the_file() {
    let cwd = tempfile::tempdir().unwrap();
    let cfg = write(
        cwd.path(),
        "comp.toml",
        "[train]\nattack = \"pgd\"\n\n[components.pgd]\nsteps = 2\nstep_sise = 0.1\n",
    );
    sat(cwd.path(), &["run", "--config", &cfg], &[]).fails_with(&[
        "comp.toml:6:1",
        "unknown key `step_sise` in [components.pgd]",
        "did you mean `step_size`",
    ]);
    let cfg = write(cwd.path(), "comp2.toml", "[components.pdg]\nsteps = 2\n");
    sat(cwd.path(), &["run", "--config", &cfg], &[]).fails_with(&[
        "comp2.toml:1:13",
        "unknown component `pdg`",
        "did you mean `pgd`",
    ]);
}

#[test]
fn unknown_plugin_names_list_the_available_ones() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(cwd.path(), &["--plugin", "maskz", "--attack", "sat"], &[]).fails_with(&[
        "no saliency component `maskz`",
        "did you mean `masks`",
        "available saliency components: boxes, gradcam++, gradient",
        "masks",
    ]);
    tiny_run(cwd.path(), &["--attack", "pgdd"], &[]).fails_with(&[
        "no attack component `pgdd`",
        "did you mean `pgd`",
        "fgsm",
    ]);
    // A saliency source named as an attack is reported as such.
    tiny_run(cwd.path(), &["--attack", "masks"], &[]).fails_with(&["no attack component `masks`"]);
}

#[test]
fn values_are_checked() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(cwd.path(), &["--set", "train.optimizer=adma"], &[])
        .fails_with(&["unknown value `adma`", "did you mean `adam`"]);
    tiny_run(
        cwd.path(),
        &["--attack", "pgd", "--set", "components.pgd.restarts=0"],
        &[],
    )
    .fails_with(&[
        "attack `pgd`",
        "libsat_plugin_attacks.so",
        "[pgd] restarts = 0 is outside [1, 100]",
    ]);
    tiny_run(
        cwd.path(),
        &["--set", "components.pgd.epsilon=\"8/0\""],
        &[],
    )
    .fails_with(&["8/0", "denominator is zero"]);
    tiny_run(cwd.path(), &["--attack", "sat"], &[])
        .fails_with(&["attack `sat` needs saliency maps", "--plugin masks"]);
    sat(cwd.path(), &["run", "--set", "device=gpu"], &[]).fails_with(&["unknown device `gpu`"]);
}

#[test]
fn a_value_given_by_a_flag_is_blamed_on_the_flag() {
    let cwd = tempfile::tempdir().unwrap();
    // The file sets both keys; the flags replace them, and the errors name the flags.
    let cfg = write(
        cwd.path(),
        "c.toml",
        "[train]\nattack = \"fgsm\"\n\n[eval]\nepsilons = [\"8/255\"]\n",
    );
    let err = sat(
        cwd.path(),
        &[
            "eval",
            "--config",
            &cfg,
            "--checkpoint",
            "none.safetensors",
            "--eps",
            "8",
        ],
        &[],
    )
    .fails_with(&[
        "--eps: eval.epsilons: 8 is outside [0, 1]",
        "did you mean 8/255?",
    ]);
    assert!(!err.contains("c.toml:5"), "{err}");
    sat(
        cwd.path(),
        &["run", "--config", &cfg, "--attack", "pgdd"],
        &[],
    )
    .fails_with(&["--attack: no attack component `pgdd`", "did you mean `pgd`"]);
    sat(
        cwd.path(),
        &["run", "--config", &cfg, "--set", "eval.epsilons=[2]"],
        &[],
    )
    .fails_with(&["--set eval.epsilons: eval.epsilons: 2 is outside [0, 1]"]);
    assert!(!cwd.path().join("runs").exists(), "nothing is written");
}

#[test]
fn a_long_value_is_shortened_in_the_error() {
    let cwd = tempfile::tempdir().unwrap();
    let ones = vec!["1"; 2_000_000].join(", ");
    let cfg = write(
        cwd.path(),
        "long.toml",
        &format!("[train]\nepochs = 2\nmilestones = [{ones}]\n"),
    );
    let err = sat(cwd.path(), &["run", "--config", &cfg], &[]).fails_with(&[
        "long.toml:3:1: train.milestones [1, 1, 1, 1, 1, 1, …, 1, 1] (2000000 entries) must be strictly increasing",
    ]);
    assert!(err.len() < 2000, "{} bytes of stderr", err.len());
    let name = "x".repeat(100_000);
    let err = sat(
        cwd.path(),
        &["run", "--set", &format!("data.dataset=\"{name}\"")],
        &[],
    )
    .fails_with(&[
        "--set data.dataset: data.dataset: unknown dataset `xxxx",
        "… (100000 bytes)",
    ]);
    assert!(err.len() < 2000, "{} bytes of stderr", err.len());
}

#[test]
fn sizes_are_ranged_before_any_allocation_and_nothing_is_written() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |sets: &[&str]| {
        let mut args = vec!["run"];
        for s in sets {
            args.extend(["--set", s]);
        }
        sat(cwd.path(), &args, &[])
    };
    // A single-process run refuses what a data-parallel run would: its config.toml is
    // what `--resume` reads under torchrun.
    run(&["distributed.timeout_seconds=0"]).fails_with(&[
        "--set distributed.timeout_seconds: distributed.timeout_seconds = 0 is outside [1, 86400]",
    ]);
    run(&["distributed.backend=\"mpi\""])
        .fails_with(&["distributed.backend: unknown backend `mpi`; accepted: auto, gloo, nccl"]);
    run(&["model.arch=\"wrn-28-100000\""]).fails_with(&[
        "model.arch: model arch `wrn-28-100000`: the widening factor 100000 is outside [1, 64]",
    ]);
    run(&["model.arch=\"wrn-100000000-10\""])
        .fails_with(&["the depth 100000000 is outside [10, 1000]"]);
    // In range, but some 980 GiB of training state: refused against MemAvailable.
    run(&["device=\"cpu\"", "model.arch=\"wrn-1000-64\""]).fails_with(&[
        "--set model.arch: model.arch = \"wrn-1000-64\"",
        "more than the",
        "of memory available (MemAvailable)",
    ]);
    run(&["train.attack=\"pgd\"", "components.pgd.steps=1000000000"])
        .fails_with(&["[pgd] steps = 1000000000 is outside [0, 10000]"]);
    run(&[
        "train.attack=\"apgd-t\"",
        "components.apgd-t.target_classes=5000",
    ])
    .fails_with(&["[apgd-t] target_classes = 5000 is outside [1, 1000]"]);
    run(&[
        "eval.attacks=[\"square\"]",
        "components.square.queries=2000000000",
    ])
    .fails_with(&["[square] queries = 2000000000 is outside [1, 1000000]"]);
    assert!(!cwd.path().join("runs").exists(), "nothing is written");
}
