//! The plugin boundary holds against components that break the contract in ways the
//! host cannot see in their outputs: writing into the host's batch, panicking where no
//! error can be returned (threat model, destructor).
use sat_tests::{metrics, plugin_dir, tiny_run};
use std::path::Path;

fn with_faulty(cwd: &Path, extra: &[&str]) -> sat_tests::Run {
    let dir = plugin_dir(&["sat_fixture_faulty"]);
    let mut args = vec!["--plugin-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    tiny_run(cwd, &args, &[])
}

#[test]
fn a_plugin_that_writes_into_the_batch_is_refused_by_name() {
    let cwd = tempfile::tempdir().unwrap();
    let err = with_faulty(
        cwd.path(),
        &["--plugin", "in-place", "--attack", "sat", "--set", "name=w"],
    )
    .fails_with(&["saliency source `in-place`", "modified the batch it was handed in place"]);
    assert!(err.contains("libsat_fixture_faulty.so"), "{err}");
    assert_eq!(metrics(&cwd.path().join("runs/w"))["status"], "failed");
}

#[test]
fn a_threat_model_that_panics_is_an_error_not_a_disabled_budget() {
    let cwd = tempfile::tempdir().unwrap();
    with_faulty(cwd.path(), &["--attack", "panicking-threat"]).fails_with(&[
        "attack `panicking-threat`",
        "deliberate panic in threat_model",
    ]);
}

#[test]
fn a_destructor_that_panics_is_reported_and_the_run_completes() {
    let cwd = tempfile::tempdir().unwrap();
    let run = with_faulty(
        cwd.path(),
        &["--plugin", "panicking-drop", "--attack", "sat", "--set", "name=d"],
    )
    .success();
    assert!(
        run.stderr.contains("saliency source `panicking-drop` panicked while being dropped")
            && run.stderr.contains("deliberate panic in a destructor"),
        "{}",
        run.stderr
    );
    assert_eq!(metrics(&cwd.path().join("runs/d"))["status"], "completed");
}
