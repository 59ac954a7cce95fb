//! Issue 22, end to end: what sat reads is a regular file of a bounded size, a directory
//! walk reports link loops, and stored state is input like any other: checked field by
//! field, and a refusal changes nothing on disk.
use sat_tests::{image_folder, metrics, sat_host, tiny_run, write};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sat-host args…` in `cwd`; asserts it fails cleanly (exit 1) within `seconds`
/// — a hang is a failure, and the process is killed — with every needle in stderr.
fn fails_within(cwd: &Path, args: &[&str], seconds: u64, needles: &[&str]) -> String {
    let mut child = Command::new(sat_host())
        .args(args)
        .current_dir(cwd)
        .env_remove("SAT_PLUGIN_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sat-host");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().expect("poll sat-host").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap sat-host");
            panic!(
                "sat-host {args:?} still ran after {seconds} s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("reap sat-host");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "sat-host {args:?}:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "sat-host {args:?}: stderr lacks {n:?}:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let made = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(made.success());
}

#[test]
fn special_files_are_refused_by_name_without_hanging() {
    let cwd = tempfile::tempdir().unwrap();
    let c = cwd.path();
    // A config that is a link to /dev/zero (read until memory ran out) or a FIFO (hung).
    symlink("/dev/zero", c.join("zero.toml")).unwrap();
    fails_within(c, &["run", "--config", "zero.toml"], 20, &["zero.toml", "character device"]);
    mkfifo(&c.join("fifo.toml"));
    fails_within(c, &["run", "--config", "fifo.toml"], 20, &["fifo.toml", "FIFO"]);
    // A config far larger than any config.
    let big = std::fs::File::create(c.join("big.toml")).unwrap();
    big.set_len(64 << 20).unwrap();
    fails_within(c, &["run", "--config", "big.toml"], 20, &["big.toml", "more than a config may have"]);
    // An image of an ImageFolder that is a FIFO (hung the run, then ignored SIGTERM).
    let folder = c.join("folder");
    image_folder(&folder, 2);
    mkfifo(&folder.join("train/c1/img0.png"));
    let data = [
        "--set", "data.dataset=image-folder", "--set", "data.root=folder",
        "--set", "data.image_size=16", "--set", "name=f",
    ];
    let mut args = vec!["run"];
    args.extend_from_slice(&data);
    fails_within(c, &args, 30, &["img0.png", "is a FIFO, not a regular file"]);
    // A TorchScript model that is /dev/zero.
    symlink("/dev/zero", c.join("model.pt")).unwrap();
    let eval = write(c, "m.toml", "name = \"m\"\n[data]\ntest_size = 16\n[model]\ntorchscript = \"model.pt\"\n");
    fails_within(c, &["eval", "--config", &eval], 20, &["model.pt", "character device"]);
}

#[test]
fn a_link_loop_among_class_directories_is_reported() {
    let cwd = tempfile::tempdir().unwrap();
    let c = cwd.path();
    let folder = c.join("folder");
    image_folder(&folder, 2);
    let data = [
        "run", "--set", "data.dataset=image-folder", "--set", "data.root=folder",
        "--set", "data.image_size=16", "--set", "name=l",
    ];
    // A class directory that leads back to the split (was read as another class) …
    symlink(folder.join("train"), folder.join("train/c3")).unwrap();
    fails_within(c, &data, 30, &["train/c3", "link loop"]);
    // … and two links that lead to each other (was skipped without a word).
    std::fs::remove_file(folder.join("train/c3")).unwrap();
    symlink(folder.join("train/c4"), folder.join("train/c3")).unwrap();
    symlink(folder.join("train/c3"), folder.join("train/c4")).unwrap();
    fails_within(c, &data, 30, &["train/c3", "loops back on itself"]);
}

/// Sets the 8 bytes of tensor `key` in the safetensors file `path` to `value`.
fn set_stored(path: &Path, key: &str, value: [u8; 8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header]).unwrap();
    let start = meta[key]["data_offsets"][0].as_u64().expect(key) as usize + 8 + header;
    bytes[start..start + 8].copy_from_slice(&value);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn stored_state_is_checked_field_by_field_and_a_refusal_changes_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let c = cwd.path();
    tiny_run(c, &["--set", "name=s"], &[]).success();
    let run = c.join("runs/s");
    let files = ["state.safetensors", "metrics.json", "config.toml", "checkpoint.safetensors"];
    let pristine: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect();
    let restore = || {
        for (f, bytes) in files.iter().zip(&pristine) {
            std::fs::write(run.join(f), bytes).unwrap();
        }
    };
    let resume = ["run", "--resume", "runs/s", "--set", "train.epochs=2"];
    let state = run.join("state.safetensors");
    let cases: [(&str, [u8; 8], &str); 5] = [
        // A negative count read as a huge u32: the run was reported completed.
        ("trainer.epochs_done", (-1i64).to_le_bytes(), "`trainer.epochs_done` = -1 is outside [1, 100000]"),
        // Zero: the finished weights were trained again from epoch 1.
        ("trainer.epochs_done", 0i64.to_le_bytes(), "`trainer.epochs_done` = 0 is outside"),
        ("trainer.epochs_done", 3i64.to_le_bytes(), "`trainer.epochs_done` = 3 is more than [train] epochs = 2"),
        ("optimizer.steps", (-5i64).to_le_bytes(), "`optimizer.steps` = -5 is outside"),
        ("amp.scale", f64::NAN.to_le_bytes(), "`amp.scale` = NaN is outside (0, 2^64]"),
    ];
    let snapshot = || -> Vec<Vec<u8>> { files.iter().map(|f| std::fs::read(run.join(f)).unwrap()).collect() };
    for (key, value, needle) in cases {
        set_stored(&state, key, value);
        let before = snapshot();
        fails_within(c, &resume, 60, &["state.safetensors", needle]);
        assert!(snapshot() == before, "{key}: the refused resume changed the run directory");
        restore();
    }
    // metrics.json is input too: its figures and its epochs against the state file.
    let text = String::from_utf8(pristine[1].clone()).unwrap();
    let accuracy = metrics(&run)["epochs"][0]["train_accuracy"].to_string();
    let bad = text.replacen(&format!("\"train_accuracy\": {accuracy}"), "\"train_accuracy\": 7.0", 1);
    assert_ne!(bad, text, "metrics.json: {text}");
    std::fs::write(run.join("metrics.json"), bad).unwrap();
    fails_within(c, &resume, 60, &["metrics.json", "epochs[0].train_accuracy = 7 is outside [0, 1]"]);
    restore();
    let mut lost: serde_json::Value = serde_json::from_str(&text).unwrap();
    lost["epochs"] = serde_json::json!([]);
    std::fs::write(run.join("metrics.json"), lost.to_string()).unwrap();
    fails_within(c, &resume, 60, &["`trainer.epochs_done` = 1 but metrics.json records 0 epochs"]);
    restore();
    // The untouched directory still resumes.
    sat_tests::sat(c, &resume, &[]).success();
    assert_eq!(metrics(&run)["epochs"].as_array().unwrap().len(), 2);
}

#[test]
fn command_line_counts_are_ranged_and_named_by_their_flag() {
    let cwd = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (&["bench", "--batch", "0"][..], "'--batch <BATCH>': 0 is not in 1..=65536"),
        (&["bench", "--steps", "100000000"][..], "'--steps <STEPS>': 100000000 is not in 1..=100000"),
        (&["bench", "--warmup", "99999"][..], "'--warmup <WARMUP>'"),
        (&["saliency", "--samples", "100000"][..], "'--samples <SAMPLES>': 100000 is not in 1..=1000"),
        (&["attack", "--attack", "pgd", "--samples", "1000000000"][..], "'--samples <N>'"),
    ] {
        let out = Command::new(sat_host()).args(args).current_dir(cwd.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
