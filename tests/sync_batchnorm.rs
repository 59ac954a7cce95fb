//! `[train] sync_batchnorm` end to end (issue 20, point 3): 2 ranks × batch 32 with
//! synchronised BatchNorm train a PreAct ResNet as 1 process × batch 64 does, running
//! statistics included (within 1e-5); without it they do not. Ranks run over Gloo on
//! 127.0.0.1 under a hard deadline, and are killed if the test fails.
use sat_tests::{metrics, sat, sat_host};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PreAct ResNet-18 at width 4 on 256 shapes of 16×16 (4 global batches of 64), no
/// augmentation, SGD with momentum, two epochs, no attack; only clean accuracy at the end.
fn config(dir: &Path) {
    std::fs::write(
        dir.join("c.toml"),
        r#"name = "bn"
seed = 11
device = "cpu"
[data]
dataset = "shapes"
train_size = 256
test_size = 64
image_size = 16
classes = 4
crop_padding = 0
flip = false
[model]
arch = "preact-resnet18"
width = 4
[train]
epochs = 2
batch_size = 32
optimizer = "sgd"
lr = 0.05
momentum = 0.9
sync_batchnorm = true
[eval]
attacks = []
alignment = false
batch_size = 64
[distributed]
timeout_seconds = 20
"#,
    )
    .unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Processes killed (and reaped) when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs 2 ranks of `sat-host run --config c.toml --set …` to the end (at most
/// `deadline` seconds); returns each rank's stderr after checking it succeeded.
fn two_ranks(cwd: &Path, sets: &[&str], deadline: u64) -> Vec<String> {
    let port = free_port().to_string();
    let mut args = vec!["run", "--config", "c.toml"];
    for s in sets {
        args.extend(["--set", s]);
    }
    let mut procs = Procs(Vec::new());
    let logs: Vec<PathBuf> = (0..2).map(|r| cwd.join(format!("rank{r}.log"))).collect();
    for (rank, log) in logs.iter().enumerate() {
        let child = Command::new(sat_host())
            .args(&args)
            .current_dir(cwd)
            .env_remove("SAT_PLUGIN_PATH")
            .env_remove("SAT_LOG")
            .env_remove("RUST_LOG")
            .env("OMP_NUM_THREADS", "1")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("LOCAL_WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start sat-host");
        procs.0.push(child);
    }
    let start = Instant::now();
    let mut codes = vec![None; 2];
    while codes.iter().any(Option::is_none) {
        for (c, code) in procs.0.iter_mut().zip(codes.iter_mut()) {
            if code.is_none() {
                *code = c.try_wait().unwrap().map(|s| s.code());
            }
        }
        let read = || {
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert!(
            start.elapsed() < Duration::from_secs(deadline),
            "ranks still running after {deadline} s; killed\n{}",
            read().join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    procs.0.clear();
    let stderr: Vec<String> = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    for (rank, (code, err)) in codes.iter().zip(&stderr).enumerate() {
        assert_eq!(*code, Some(Some(0)), "rank {rank} failed:\n{err}");
    }
    eprintln!("2 ranks {sets:?}: {:.1} s", start.elapsed().as_secs_f64());
    stderr
}

/// The float32 tensors of a safetensors file, by name.
fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, v)| {
            let (a, b) = (
                v["data_offsets"][0].as_u64().unwrap() as usize,
                v["data_offsets"][1].as_u64().unwrap() as usize,
            );
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k.clone(), values)
        })
        .collect()
}

/// The largest absolute difference of the two runs' checkpoints over the tensors whose
/// names contain `filter`, and that tensor's name.
fn max_difference(a: &Path, b: &Path, filter: &str) -> (f32, String) {
    let ckpt = |d: &Path| tensors(&d.join("checkpoint.safetensors"));
    let (a, b) = (ckpt(a), ckpt(b));
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0f32, String::new());
    let mut compared = 0;
    for (name, x) in a.iter().filter(|(k, _)| k.contains(filter)) {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{name}");
        compared += 1;
        for (p, q) in x.iter().zip(y) {
            let d = (p - q).abs();
            assert!(d.is_finite(), "{name}: {p} vs {q}");
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    assert!(compared > 0, "no tensor named *{filter}*");
    worst
}

#[test]
fn two_ranks_with_sync_batchnorm_train_as_one_process_with_the_global_batch() {
    let cwd = tempfile::tempdir().unwrap();
    config(cwd.path());
    let runs = cwd.path().join("runs");
    let t0 = Instant::now();

    let logs = two_ranks(cwd.path(), &["name=sync"], 120);
    assert!(
        logs[0].contains("[train] sync_batchnorm: BatchNorm statistics over the 2 ranks' batches"),
        "rank 0 did not synchronise BatchNorm (does the trainer build its model with \
         train::build_network_for?):\n{}",
        logs[0]
    );
    let single = sat(
        cwd.path(),
        &[
            "run",
            "--config",
            "c.toml",
            "--set",
            "name=single",
            "--set",
            "train.batch_size=64",
        ],
        &[],
    )
    .success();
    assert!(
        single
            .stderr
            .contains("[train] sync_batchnorm: one process"),
        "{}",
        single.stderr
    );
    let (sync, one) = (runs.join("sync"), runs.join("single"));
    for (filter, what) in [("", "any tensor"), ("running_", "a running statistic")] {
        let (diff, name) = max_difference(&sync, &one, filter);
        eprintln!("sync BN, 2 × 32 vs 1 × 64: largest difference of {what}: {diff:e} ({name})");
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
    let (m2, m1) = (metrics(&sync), metrics(&one));
    for e in 0..2 {
        let (a, b) = (&m2["epochs"][e], &m1["epochs"][e]);
        let (la, lb) = (
            a["train_loss"].as_f64().unwrap(),
            b["train_loss"].as_f64().unwrap(),
        );
        assert!((la - lb).abs() < 1e-5, "epoch {e}: loss {la} vs {lb}");
        assert_eq!(a["train_accuracy"], b["train_accuracy"], "epoch {e}");
    }
    assert_eq!(m2["clean_accuracy"], m1["clean_accuracy"]);

    // Without it, each rank normalises with its own 32 images: the same comparison fails.
    two_ranks(
        cwd.path(),
        &["name=local", "train.sync_batchnorm=false"],
        120,
    );
    let (diff, name) = max_difference(&runs.join("local"), &one, "");
    eprintln!("per-rank BN, 2 × 32 vs 1 × 64: largest difference {diff:e} ({name})");
    assert!(
        diff > 1e-3,
        "per-rank BatchNorm came within {diff} of the global batch's"
    );
    let (diff, name) = max_difference(&runs.join("local"), &one, "running_");
    eprintln!("per-rank BN: largest running-statistic difference {diff:e} ({name})");
    assert!(diff > 1e-4, "running statistics within {diff}");
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
}
