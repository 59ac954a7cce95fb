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
        "restarts must be at least 1",
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
