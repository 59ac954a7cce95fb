//! `sat-host export` (TorchScript for PyTorch) and `sat-host attack` (saved adversarial
//! examples and their gallery), end to end on tiny runs.
use sat_tests::{metrics, sat, tiny_run};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A tensor read back from a safetensors file: its shape and values (as f64).
struct Stored {
    dtype: String,
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// The tensors and the metadata of a safetensors file, parsed by hand.
fn read_safetensors(path: &Path) -> (BTreeMap<String, Stored>, serde_json::Value) {
    let raw = std::fs::read(path).expect("safetensors file");
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw[8..8 + n]).expect("JSON header");
    let metadata = header.remove("__metadata__").expect("metadata");
    let data = &raw[8 + n..];
    let tensors = header
        .into_iter()
        .map(|(name, info)| {
            let offsets: Vec<usize> = serde_json::from_value(info["data_offsets"].clone()).unwrap();
            let bytes = &data[offsets[0]..offsets[1]];
            let dtype = info["dtype"].as_str().unwrap().to_owned();
            let values = match dtype.as_str() {
                "F32" => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                "I64" => bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other}"),
            };
            let shape = serde_json::from_value(info["shape"].clone()).unwrap();
            (
                name,
                Stored {
                    dtype,
                    shape,
                    values,
                },
            )
        })
        .collect();
    (tensors, metadata)
}

/// A tiny run named `name` with a normalisation inside the model; its directory.
fn trained(cwd: &Path, name: &str) -> std::path::PathBuf {
    tiny_run(
        cwd,
        &[
            "--set",
            "model.mean=[0.5, 0.4, 0.3]",
            "--set",
            "model.std=[0.25, 0.2, 0.3]",
            "--set",
            &format!("name={name}"),
        ],
        &[],
    )
    .success();
    cwd.join("runs").join(name)
}

#[test]
fn an_exported_model_gives_sats_logits_in_pytorch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/test",
        python.display()
    );
    let cwd = tempfile::tempdir().unwrap();
    let dir = trained(cwd.path(), "ex");
    let run = dir.to_str().unwrap();
    sat(
        cwd.path(),
        &["export", "--run", run, "--out", "model.pt"],
        &[],
    )
    .success();
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cwd.path().join("model.json")).unwrap())
            .unwrap();
    assert_eq!(
        sidecar["input"]["shape"],
        serde_json::json!(["N", 3, 32, 32])
    );
    assert_eq!(sidecar["classes"], 6);
    assert_eq!(sidecar["class_names"].as_array().unwrap().len(), 6);
    assert_eq!(
        sidecar["normalisation"]["mean"],
        serde_json::json!([0.5, 0.4, 0.3])
    );
    assert_eq!(sidecar["sat_version"], env!("CARGO_PKG_VERSION"));
    assert!(sidecar["source_run"].as_str().unwrap().ends_with("runs/ex"));
    // sat's logits on every test image (clean and attacked), for PyTorch to match.
    sat(
        cwd.path(),
        &[
            "attack",
            "--run",
            run,
            "--attack",
            "fgsm",
            "--eps",
            "8/255",
            "--samples",
            "0",
            "--out",
            "all.safetensors",
        ],
        &[],
    )
    .success();
    let out = Command::new(&python)
        .arg(root.join("tests/pytorch/exported.py"))
        .args(["model.pt", "all.safetensors"])
        .arg(dir.join("metrics.json"))
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["samples"], 32);
    assert_eq!(summary["clean_accuracy"], metrics(&dir)["clean_accuracy"]);
    // Back in sat as a [model] torchscript (normalisation inside it): the same
    // function, gradients included, so the same adversarial examples.
    std::fs::write(
        cwd.path().join("ts.toml"),
        "name = \"ts\"\n[data]\ntrain_size = 64\ntest_size = 32\n[model]\ntorchscript = \"model.pt\"\n",
    )
    .unwrap();
    sat(
        cwd.path(),
        &[
            "attack",
            "--config",
            "ts.toml",
            "--attack",
            "fgsm",
            "--eps",
            "8/255",
            "--samples",
            "0",
            "--out",
            "ts.safetensors",
        ],
        &[],
    )
    .success();
    let (native, _) = read_safetensors(&cwd.path().join("all.safetensors"));
    let (traced, meta) = read_safetensors(&cwd.path().join("ts.safetensors"));
    assert!(meta["run"].as_str().unwrap().ends_with("ts.toml"));
    let most = native["adversarial"]
        .values
        .iter()
        .zip(&traced["adversarial"].values)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(most <= 1e-6, "{most}");
    assert_eq!(
        native["predicted_adversarial"].values,
        traced["predicted_adversarial"].values
    );
}

#[test]
fn export_refuses_to_replace_files_and_runs_without_weights() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = trained(cwd.path(), "ref");
    let run = dir.to_str().unwrap();
    std::fs::write(cwd.path().join("model.pt"), b"keep me").unwrap();
    sat(
        cwd.path(),
        &["export", "--run", run, "--out", "model.pt"],
        &[],
    )
    .fails_with(&["model.pt exists", "--force"]);
    assert_eq!(
        std::fs::read(cwd.path().join("model.pt")).unwrap(),
        b"keep me"
    );
    assert!(!cwd.path().join("model.json").exists());
    sat(
        cwd.path(),
        &["export", "--run", run, "--out", "model.pt", "--force"],
        &[],
    )
    .success();
    let written = std::fs::read(cwd.path().join("model.pt")).unwrap();
    assert!(written.starts_with(b"PK"), "a TorchScript (zip) archive");
    // No temporary file is left beside the outputs.
    let names: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
    let empty = cwd.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(dir.join("config.toml"), empty.join("config.toml")).unwrap();
    sat(
        cwd.path(),
        &["export", "--run", empty.to_str().unwrap(), "--out", "e.pt"],
        &[],
    )
    .fails_with(&["no checkpoint.safetensors", "no weights"]);
    sat(
        cwd.path(),
        &["export", "--run", run, "--out", "m.json"],
        &[],
    )
    .fails_with(&["extension .json"]);
}

#[test]
fn attack_saves_examples_whose_robust_accuracy_is_evals() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = trained(cwd.path(), "at");
    let run = dir.to_str().unwrap();
    // Several batches with random starts: the per-batch seeds must match eval's.
    let common = [
        "--run",
        run,
        "--attack",
        "pgd",
        "--eps",
        "8/255",
        "--set",
        "eval.batch_size=8",
    ];
    let mut args = vec!["attack"];
    args.extend(common);
    args.extend([
        "--samples",
        "20",
        "--out",
        "adv.safetensors",
        "--png",
        "gallery",
    ]);
    sat(cwd.path(), &args, &[]).success();
    let (t, meta) = read_safetensors(&cwd.path().join("adv.safetensors"));
    assert_eq!(meta["attack"], "pgd");
    assert_eq!(meta["norm"], "linf");
    assert!((meta["eps"].as_str().unwrap().parse::<f64>().unwrap() - 8.0 / 255.0).abs() < 1e-12);
    assert_eq!(t["adversarial"].shape, [20, 3, 32, 32]);
    assert_eq!(t["clean"].shape, [20, 3, 32, 32]);
    for name in ["labels", "predicted_clean", "predicted_adversarial"] {
        assert_eq!(t[name].shape, [20], "{name}");
        assert_eq!(t[name].dtype, "I64", "{name}");
    }
    assert_eq!(t["logits_adversarial"].shape, [20, 6]);
    assert!(!t.contains_key("targets"), "pgd is untargeted");
    let (clean, adv) = (&t["clean"].values, &t["adversarial"].values);
    let linf = clean
        .iter()
        .zip(adv)
        .map(|(c, a)| (a - c).abs())
        .fold(0.0, f64::max);
    assert!(linf <= 8.0 / 255.0 + 1e-6, "{linf}");
    assert!(linf > 4.0 / 255.0, "the attack moved the images: {linf}");
    assert!(adv.iter().all(|v| (0.0..=1.0).contains(v)));
    let correct = t["predicted_adversarial"]
        .values
        .iter()
        .zip(&t["labels"].values)
        .filter(|(p, l)| p == l)
        .count();
    let mut eval = vec!["eval"];
    eval.extend(common);
    eval.extend(["--set", "eval.max_samples=20", "--out", "ev"]);
    sat(cwd.path(), &eval, &[]).success();
    let robust = metrics(&cwd.path().join("ev"))["robust_accuracy"][0]["accuracy"]
        .as_f64()
        .unwrap();
    assert_eq!(correct as f64 / 20.0, robust);
    // The gallery: a decodable picture per image, and its listing.
    for i in [0, 19] {
        let png = image::open(cwd.path().join(format!("gallery/{i:05}.png"))).expect("decodes");
        assert!(
            png.width() > 3 * 128 && png.height() > 128,
            "{}x{}",
            png.width(),
            png.height()
        );
    }
    assert!(!cwd.path().join("gallery/00020.png").exists());
    let listing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cwd.path().join("gallery/gallery.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(listing["images"].as_array().unwrap().len(), 20);
    assert_eq!(listing["attack"], "pgd");
}

#[test]
fn attack_names_an_unknown_attack_and_keeps_an_existing_output() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = trained(cwd.path(), "err");
    let run = dir.to_str().unwrap();
    sat(
        cwd.path(),
        &[
            "attack",
            "--run",
            run,
            "--attack",
            "pgdd",
            "--eps",
            "8/255",
            "--out",
            "a.safetensors",
        ],
        &[],
    )
    .fails_with(&[
        "--attack",
        "no attack component `pgdd`",
        "did you mean `pgd`",
    ]);
    assert!(!cwd.path().join("a.safetensors").exists());
    // Budgets are checked against the attack's own norm: 2 is no ℓ∞ budget, and an ℓ2
    // budget beyond the image box's diameter is refused too.
    for (attack, eps, needle) in [
        ("pgd", "2", "did you mean 2/255?"),
        ("cw-l2", "1000", "the largest ℓ2 distance"),
    ] {
        sat(
            cwd.path(),
            &["attack", "--run", run, "--attack", attack, "--eps", eps, "--out", "a.safetensors"],
            &[],
        )
        .fails_with(&["--eps", needle]);
        assert!(!cwd.path().join("a.safetensors").exists());
    }
    std::fs::write(cwd.path().join("a.safetensors"), b"keep").unwrap();
    sat(
        cwd.path(),
        &[
            "attack",
            "--run",
            run,
            "--attack",
            "pgd",
            "--eps",
            "8/255",
            "--out",
            "a.safetensors",
        ],
        &[],
    )
    .fails_with(&["a.safetensors exists", "--force"]);
    assert_eq!(
        std::fs::read(cwd.path().join("a.safetensors")).unwrap(),
        b"keep"
    );
    sat(
        cwd.path(),
        &[
            "attack",
            "--attack",
            "pgd",
            "--eps",
            "8/255",
            "--out",
            "b.safetensors",
        ],
        &[],
    )
    .fails_with(&["attack needs --run DIR"]);
}
