//! The training engine end to end: resume after Ctrl-C, datasets read from files in
//! their real formats, TorchScript models, schedules and corrupt inputs.
use sat_tests::{metrics, sat, spawn_sat, tiny_run, wait_for_file};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Settings of the resume test: SGD with Nesterov momentum, a cosine schedule and PGD
/// training (random starts), so optimiser state, schedule position and attack
/// randomness all have to be restored. On the CPU even where a GPU is present: bitwise
/// reproducibility is a CPU property (cuDNN's kernels are not deterministic).
const RESUMABLE: &[&str] = &[
    "--set",
    "device=\"cpu\"",
    "--set",
    "data.train_size=384",
    "--set",
    "data.test_size=32",
    "--set",
    "train.epochs=4",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.optimizer=\"sgd\"",
    "--set",
    "train.lr=0.05",
    "--set",
    "train.nesterov=true",
    "--set",
    "train.weight_decay=0.0005",
    "--set",
    "train.schedule=\"cosine\"",
    "--set",
    "model.width=8",
    "--set",
    "eval.attacks=[]",
    "--set",
    "components.pgd.steps=3",
    "--attack",
    "pgd",
];

#[test]
fn resume_after_ctrl_c_reproduces_the_uninterrupted_weights() {
    let cwd = tempfile::tempdir().unwrap();
    let mut whole = vec!["run", "--set", "name=whole"];
    whole.extend_from_slice(RESUMABLE);
    sat(cwd.path(), &whole, &[]).success();

    // Ctrl-C at global step 15 of 48: in epoch 2 (12 batches an epoch), part-way.
    let mut cut = vec!["run", "--set", "name=cut"];
    cut.extend_from_slice(RESUMABLE);
    let out = sat(cwd.path(), &cut, &[("SAT_DEBUG_SIGINT_AT_STEP", "15")]);
    assert_eq!(out.code, Some(130), "{}", out.stderr);
    let cut = cwd.path().join("runs/cut");
    let m = metrics(&cut);
    assert_eq!(m["status"], "interrupted");
    let finished = m["epochs"].as_array().unwrap().len();
    assert_eq!(finished, 1, "one epoch before the interrupt");
    assert!(out.stderr.contains("epoch 2 stopped after batch"), "{}", out.stderr);

    sat(cwd.path(), &["run", "--resume", cut.to_str().unwrap()], &[]).success();
    let a = std::fs::read(cwd.path().join("runs/whole/checkpoint.safetensors")).unwrap();
    let b = std::fs::read(cut.join("checkpoint.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed run's final weights differ from the uninterrupted run's"
    );
    let (mw, mc) = (metrics(&cwd.path().join("runs/whole")), metrics(&cut));
    assert_eq!(mc["status"], "completed");
    assert_eq!(mc["epochs"].as_array().unwrap().len(), 4);
    for e in 0..4 {
        assert_eq!(
            mw["epochs"][e]["train_loss"], mc["epochs"][e]["train_loss"],
            "epoch {e}"
        );
    }
    // Stopped part-way through an epoch, the resume continued at the next batch (a
    // mid-epoch state), and the weights are bit-identical.
    let log = std::fs::read_to_string(cut.join("log.txt")).unwrap();
    assert!(log.contains("resuming epoch 2 of 4 after its batch"), "{log}");
}

#[test]
fn resume_needs_a_run_directory_with_state() {
    let cwd = tempfile::tempdir().unwrap();
    sat(cwd.path(), &["run", "--resume", "runs/nothing"], &[])
        .fails_with(&["--resume runs/nothing: no config.toml there"]);
    let dir = cwd.path().join("runs/empty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "name = \"empty\"\n[data]\ntrain_size = 64\ntest_size = 32\n",
    )
    .unwrap();
    // A run stopped before its first epoch finished (no state file yet) starts again
    // from epoch 1, and says so.
    let out = sat(
        cwd.path(),
        &["run", "--resume", "runs/empty", "--set", "train.epochs=1", "--set", "eval.attacks=[]"],
        &[],
    )
    .success();
    assert!(
        out.stderr.contains("no finished epoch in runs/empty (no state.safetensors): training starts again from epoch 1"),
        "{}",
        out.stderr
    );
    assert_eq!(metrics(&dir)["status"], "completed");
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i: u32| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_binaries_train_and_a_truncated_file_is_a_clean_error() {
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&root).unwrap();
    for b in 1..=5u8 {
        let batch: Vec<u8> = (0..8u8)
            .flat_map(|i| cifar_record(i % 10, b * 8 + i))
            .collect();
        std::fs::write(root.join(format!("data_batch_{b}.bin")), batch).unwrap();
    }
    let test: Vec<u8> = (0..10u8).flat_map(|i| cifar_record(i, i)).collect();
    std::fs::write(root.join("test_batch.bin"), &test).unwrap();
    let args = [
        "--set",
        "data.dataset=\"cifar10\"",
        "--set",
        "data.root=\"cifar-10-batches-bin\"",
        "--set",
        "data.train_size=0",
        "--set",
        "name=c10-empty",
    ];
    // train_size = 0 asks for an empty subset: refused before any work.
    tiny_run(cwd.path(), &args, &[]).fails_with(&["data.train_size = 0 is outside [1, "]);
    let args = [
        "--set",
        "data.dataset=\"cifar10\"",
        "--set",
        "data.root=\"cifar-10-batches-bin\"",
        "--set",
        "data.train_size=40",
        "--set",
        "name=c10",
        "--attack",
        "fgsm",
    ];
    let out = tiny_run(cwd.path(), &args, &[]).success();
    let log = std::fs::read_to_string(cwd.path().join("runs/c10/log.txt")).unwrap();
    assert!(
        log.contains("40 training and 10 test images, 10 classes"),
        "{log}\n{}",
        out.stderr
    );
    assert!(metrics(&cwd.path().join("runs/c10"))["clean_accuracy"].is_number());

    std::fs::write(root.join("test_batch.bin"), &test[..3073 * 4 + 100]).unwrap();
    tiny_run(cwd.path(), &args, &[]).fails_with(&["test_batch.bin, record 4: truncated"]);
    tiny_run(cwd.path(), &["--set", "data.dataset=\"cifar10\""], &[])
        .fails_with(&["[data] root: dataset `cifar10` needs the directory"]);
    tiny_run(cwd.path(), &["--set", "data.dataset=\"cifar11\""], &[])
        .fails_with(&["unknown dataset `cifar11`", "did you mean `cifar10`"]);
}

#[test]
fn an_image_folder_with_sidecar_masks_trains_with_sat() {
    use image::{GrayImage, Luma, Rgb, RgbImage};
    let cwd = tempfile::tempdir().unwrap();
    let root = cwd.path().join("pets");
    for split in ["train", "test"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..6u32 {
                let image = RgbImage::from_fn(48, 40, |x, y| {
                    let on = if c == 0 { x < 24 } else { y < 20 };
                    Rgb(if on {
                        [220, 40, (i * 30) as u8]
                    } else {
                        [30, 30, 30]
                    })
                });
                image.save(dir.join(format!("{i}.png"))).unwrap();
                if i % 2 == 0 {
                    GrayImage::from_fn(48, 40, |x, y| {
                        let on = if c == 0 { x < 24 } else { y < 20 };
                        Luma([if on { 255 } else { 0 }])
                    })
                    .save(dir.join(format!("{i}.mask.png")))
                    .unwrap();
                }
            }
        }
    }
    let args = [
        "--set",
        "data.dataset=\"image-folder\"",
        "--set",
        "data.root=\"pets\"",
        "--set",
        "data.train_size=100",
        "--set",
        "name=pets",
        "--plugin",
        "masks",
        "--attack",
        "sat",
    ];
    tiny_run(cwd.path(), &args, &[]).success();
    let log = std::fs::read_to_string(cwd.path().join("runs/pets/log.txt")).unwrap();
    assert!(
        log.contains("12 training and 12 test images, 2 classes"),
        "{log}"
    );
    let mut skip = args.to_vec();
    skip.extend([
        "--set",
        "data.missing_masks=\"skip\"",
        "--set",
        "name=pets-skip",
    ]);
    tiny_run(cwd.path(), &skip, &[]).success();
    let log = std::fs::read_to_string(cwd.path().join("runs/pets-skip/log.txt")).unwrap();
    assert!(log.contains("6 training and 6 test images"), "{log}");

    std::fs::write(root.join("train/dog/3.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    tiny_run(cwd.path(), &args, &[]).fails_with(&["train/dog/3.png: cannot decode image"]);
}

#[test]
fn a_torchscript_model_is_evaluated_and_attacked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/test",
        python.display()
    );
    let cwd = tempfile::tempdir().unwrap();
    let status = Command::new(&python)
        .arg(root.join("tests/pytorch/crosscheck.py"))
        .arg(cwd.path())
        .status()
        .unwrap();
    assert!(status.success());
    // crosscheck.py exports a 5-class CNN for 16×16 images.
    std::fs::write(
        cwd.path().join("ts.toml"),
        r#"name = "ts"
[data]
image_size = 16
classes = 5
test_size = 64
[model]
torchscript = "model.pt"
[eval]
attacks = ["fgsm", "pgd"]
epsilons = ["8/255"]
"#,
    )
    .unwrap();
    let out = sat(cwd.path(), &["eval", "--config", "ts.toml"], &[]).success();
    let m = metrics(&cwd.path().join("runs/ts-eval"));
    let clean = m["clean_accuracy"].as_f64().unwrap();
    let robust = m["robust_accuracy"].as_array().unwrap();
    assert_eq!(robust.len(), 2, "{}", out.stdout);
    for r in robust {
        assert!(r["accuracy"].as_f64().unwrap() <= clean, "{r}");
    }
    sat(
        cwd.path(),
        &["eval", "--config", "ts.toml", "--set", "data.image_size=32"],
        &[],
    )
    .fails_with(&["[model] the model fails on a [1, 3, 32, 32] batch"]);
    sat(cwd.path(), &["run", "--config", "ts.toml"], &[])
        .fails_with(&["a TorchScript model can be evaluated and attacked"]);
}

#[test]
fn a_checkpoint_of_another_architecture_is_refused_by_name() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(cwd.path(), &["--set", "name=small"], &[]).success();
    let out = sat(
        cwd.path(),
        &[
            "eval",
            "--run",
            "runs/small",
            "--set",
            "model.arch=\"preact-resnet18\"",
        ],
        &[],
    );
    out.fails_with(&["checkpoint.safetensors", "written for another model"]);
}

#[test]
fn a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let cwd = tempfile::tempdir().unwrap();
    // A sane rate in epoch 1, then ×1e30 from epoch 2 on.
    let out = tiny_run(
        cwd.path(),
        &[
            "--set",
            "name=diverge",
            "--set",
            "train.epochs=3",
            "--set",
            "train.optimizer=\"sgd\"",
            "--set",
            "train.lr=0.01",
            "--set",
            "train.schedule=\"multistep\"",
            "--set",
            "train.milestones=[1]",
            "--set",
            "train.gamma=1e30",
        ],
        &[],
    );
    out.fails_with(&[
        "the training loss became",
        "in epoch 2",
        "runs/diverge/checkpoint.safetensors",
    ]);
    let dir = cwd.path().join("runs/diverge");
    let m = metrics(&dir);
    assert_eq!(m["status"], "failed");
    assert_eq!(m["epochs"].as_array().unwrap().len(), 1);
    assert!(m["error"].as_str().unwrap().contains("in epoch 2"));
    // The kept checkpoint is epoch 1's: finite weights that evaluate.
    sat(
        cwd.path(),
        &["eval", "--run", "runs/diverge", "--set", "eval.attacks=[]"],
        &[],
    )
    .success();
}

#[test]
fn every_architecture_trains_a_step_and_bad_schedules_are_config_errors() {
    let cwd = tempfile::tempdir().unwrap();
    for arch in ["preact-resnet18", "wrn-10-1", "resnet10"] {
        tiny_run(
            cwd.path(),
            &[
                "--set",
                &format!("name={arch}"),
                "--set",
                &format!("model.arch=\"{arch}\""),
                "--set",
                "model.mean=[0.5, 0.5, 0.5]",
                "--set",
                "model.std=[0.25, 0.25, 0.25]",
                "--set",
                "train.schedule=\"one-cycle\"",
                "--set",
                "eval.attacks=[]",
            ],
            &[],
        )
        .success();
    }
    let cpu_amp = tiny_run(
        cwd.path(),
        &["--set", "train.amp=true", "--set", "device=\"cpu\""],
        &[],
    )
    .success();
    assert!(
        cpu_amp
            .stderr
            .contains("mixed precision is used on CUDA only"),
        "{}",
        cpu_amp.stderr
    );
    tiny_run(cwd.path(), &["--set", "train.schedule=\"cosin\""], &[])
        .fails_with(&["--set train.schedule: unknown value `cosin`; did you mean `cosine`?"]);
    tiny_run(
        cwd.path(),
        &["--set", "model.mean=[0.5]", "--set", "model.std=[0.0]"],
        &[],
    )
    .fails_with(&["model.std: 0 is outside (0, ∞)"]);
}

/// Runs only where `nvidia-smi` finds a GPU (the CI machine has none; it prints why it
/// returns early): mixed-precision training on CUDA completes with finite figures.
#[test]
fn mixed_precision_trains_on_cuda() {
    let gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    if !gpu {
        eprintln!("mixed_precision_trains_on_cuda: no GPU, nothing to run");
        return;
    }
    let cwd = tempfile::tempdir().unwrap();
    let out = tiny_run(
        cwd.path(),
        &[
            "--set",
            "name=amp",
            "--set",
            "device=\"cuda\"",
            "--set",
            "train.amp=true",
            "--set",
            "train.epochs=2",
        ],
        &[],
    )
    .success();
    assert!(!out.stderr.contains("mixed precision is used on CUDA only"));
    let m = metrics(&cwd.path().join("runs/amp"));
    for e in m["epochs"].as_array().unwrap() {
        assert!(e["train_loss"].as_f64().unwrap().is_finite());
    }
}

#[test]
fn bench_measures_every_row_and_writes_json() {
    let cwd = tempfile::tempdir().unwrap();
    let out = sat(
        cwd.path(),
        &[
            "bench",
            "--models",
            "small-cnn",
            "--batch",
            "4",
            "--warmup",
            "0",
            "--steps",
            "1",
            "--set",
            "model.width=4",
            "--json",
            "bench.json",
        ],
        &[],
    )
    .success();
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.path().join("bench.json")).unwrap())
            .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 11, "{}", out.stdout);
    for r in rows {
        assert!(r["images_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r}");
    }
    for row in ["trades-10", "rrr-masks", "input-gradient", "fgsm-gradalign"] {
        assert!(
            out.stdout.contains(&format!("| small-cnn | {row} |")),
            "{row}: {}",
            out.stdout
        );
    }
    sat(cwd.path(), &["bench", "--rows", "pgd-8"], &[]).fails_with(&["unknown bench row `pgd-8`"]);
}

#[test]
fn kill_9_never_leaves_a_torn_checkpoint_and_resume_continues() {
    let cwd = tempfile::tempdir().unwrap();
    let args = [
        "run",
        "--set",
        "name=crash",
        "--set",
        "data.train_size=96",
        "--set",
        "data.test_size=32",
        "--set",
        "train.batch_size=32",
        "--set",
        "model.width=4",
        "--set",
        "train.epochs=400",
        "--set",
        "eval.attacks=[]",
    ];
    let dir = cwd.path().join("runs/crash");
    let state = dir.join("state.safetensors");
    // Several SIGKILLs at staggered moments; after each the files on disk must load.
    for round in 0..4u64 {
        let resume = ["run", "--resume", "runs/crash"];
        let mut child = spawn_sat(
            cwd.path(),
            if round == 0 { &args } else { &resume },
            Stdio::null(),
        );
        wait_for_file(&state, 120);
        std::thread::sleep(Duration::from_millis(150 + 97 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // A fresh --out each round: eval refuses to replace another directory's results.
        let out = format!("eval-{round}");
        sat(
            cwd.path(),
            &[
                "eval",
                "--run",
                "runs/crash",
                "--set",
                "eval.attacks=[]",
                "--out",
                &out,
            ],
            &[],
        )
        .success();
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Finish quickly: resume with fewer epochs than already done, or a few more.
    let done = metrics(&dir)["epochs"].as_array().unwrap().len();
    let more = format!("train.epochs={}", done + 1);
    sat(
        cwd.path(),
        &["run", "--resume", "runs/crash", "--set", &more],
        &[],
    )
    .success();
    assert_eq!(metrics(&dir)["status"], "completed", "{leftovers:?}");
}

/// A panic in the host (injected with the test-only `SAT_DEBUG_PANIC_AT_STEP`, as a
/// libtorch error such as CUDA out of memory would panic) ends the run as `failed`,
/// with the message in metrics.json and log.txt and exit code 70, not Rust's 101; the
/// checkpoint of the last finished epoch is intact, and `--resume` finishes the run as
/// if nothing had happened. On the CPU for bitwise comparisons.
#[test]
fn a_panic_in_the_host_is_recorded_and_the_run_resumes_from_the_last_epoch() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |name: &str, epochs: &str, env: &[(&str, &str)]| {
        let args = [
            "--set",
            "device=\"cpu\"",
            "--set",
            "eval.attacks=[]",
            "--set",
            epochs,
            "--set",
            &format!("name={name}"),
        ];
        tiny_run(cwd.path(), &args, env)
    };
    run("one", "train.epochs=1", &[]).success();
    run("two", "train.epochs=2", &[]).success();
    // 64 training images in batches of 32: global step 2 is the first of epoch 2.
    let out = run(
        "fault",
        "train.epochs=2",
        &[("SAT_DEBUG_PANIC_AT_STEP", "2")],
    );
    assert_eq!(
        out.code,
        Some(70),
        "a caught panic exits with 70\nstderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("deliberate panic at global step 2"),
        "{}",
        out.stderr
    );
    let dir = cwd.path().join("runs/fault");
    let m = metrics(&dir);
    assert_eq!(m["status"], "failed");
    let error = m["error"].as_str().unwrap();
    assert!(
        error.contains("the host panicked") && error.contains("deliberate panic at global step 2"),
        "{error}"
    );
    assert_eq!(m["epochs"].as_array().unwrap().len(), 1);
    let log = std::fs::read_to_string(dir.join("log.txt")).unwrap();
    assert!(
        log.contains("the run failed") && log.contains("deliberate panic at global step 2"),
        "{log}"
    );
    let weights = |name: &str| {
        std::fs::read(
            cwd.path()
                .join(format!("runs/{name}/checkpoint.safetensors")),
        )
        .unwrap()
    };
    assert!(
        weights("fault") == weights("one"),
        "the checkpoint is epoch 1's"
    );

    sat(cwd.path(), &["run", "--resume", dir.to_str().unwrap()], &[]).success();
    let m = metrics(&dir);
    assert_eq!(m["status"], "completed");
    assert!(m.get("error").is_none(), "{m}");
    assert_eq!(m["epochs"].as_array().unwrap().len(), 2);
    assert!(
        weights("fault") == weights("two"),
        "the resumed run ends where the uninterrupted one does"
    );
    let two = metrics(&cwd.path().join("runs/two"));
    for e in 0..2 {
        for key in ["train_loss", "data_digest"] {
            assert_eq!(
                m["epochs"][e][key], two["epochs"][e][key],
                "epoch {e} {key}"
            );
        }
    }
}
