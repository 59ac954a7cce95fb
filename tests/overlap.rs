//! The gradient all-reduce overlapped with the backward pass (`[distributed] overlap`):
//! bucketed all-reduces launched from autograd hooks train the weights the one flat
//! all-reduce after backward trains (identical bits on 2 ranks, within 1e-6 on 3), and
//! the weights one process trains on the global batch (within 1e-5). Ranks run the real
//! binary over Gloo on 127.0.0.1 with a hard deadline; a guard kills them on failure.
use sat_tests::{sat, sat_host};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Tiny buckets (105 bytes): every parameter of the `mlp` gets a bucket of its own
/// (but `head.bias` shares one with `fc1.weight`), so several all-reduces run per step.
const TINY_BUCKETS: &str = "distributed.bucket_mb=0.0001";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A model without BatchNorm (`mlp`: fc1, head), no augmentation, SGD with momentum;
/// 192 training images = 3 global batches of 64 on 2 ranks, 2 of 96 on 3; no evaluation.
fn config(dir: &Path) {
    std::fs::write(
        dir.join("c.toml"),
        r#"name = "o"
seed = 11
device = "cpu"
[data]
dataset = "shapes"
train_size = 192
test_size = 16
image_size = 16
classes = 4
crop_padding = 0
flip = false
[model]
arch = "mlp"
width = 32
[train]
epochs = 2
batch_size = 32
optimizer = "sgd"
lr = 0.05
momentum = 0.9
[eval]
attacks = []
alignment = false
[distributed]
timeout_seconds = 20
"#,
    )
    .unwrap();
}

/// Processes killed (and reaped) when dropped: a failing test leaves none behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `world` ranks of `sat-host run --config c.toml --set name=NAME sets…` (debug
/// log) and returns each rank's stderr; every rank must succeed within `deadline`.
fn run_ranks(
    cwd: &Path,
    world: usize,
    name: &str,
    sets: &[&str],
    deadline: Duration,
) -> Vec<String> {
    let port = free_port();
    let mut procs = Procs(Vec::new());
    let mut logs: Vec<PathBuf> = Vec::new();
    for rank in 0..world {
        let log = cwd.join(format!("{name}.rank{rank}.log"));
        let mut cmd = Command::new(sat_host());
        cmd.args([
            "run",
            "--config",
            "c.toml",
            "--set",
            &format!("name={name}"),
        ]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let child = cmd
            .current_dir(cwd)
            .env_remove("SAT_PLUGIN_PATH")
            .env_remove("RUST_LOG")
            .env("SAT_LOG", "debug")
            .env("OMP_NUM_THREADS", "1")
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sat-host");
        procs.0.push(child);
        logs.push(log);
    }
    let start = Instant::now();
    let mut codes: Vec<Option<Option<i32>>> = vec![None; world];
    while codes.iter().any(Option::is_none) {
        for (i, c) in procs.0.iter_mut().enumerate() {
            if codes[i].is_none() {
                codes[i] = c.try_wait().unwrap().map(|s| s.code());
            }
        }
        let read = || -> Vec<String> {
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect()
        };
        assert!(
            start.elapsed() < deadline,
            "{name}: ranks still running after {deadline:?}; killed\n{}",
            read().join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    procs.0.clear();
    let stderr: Vec<String> = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    for (rank, code) in codes.iter().enumerate() {
        assert_eq!(
            *code,
            Some(Some(0)),
            "{name}: rank {rank}\n{}",
            stderr[rank]
        );
    }
    eprintln!(
        "{name}: {world} ranks in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    stderr
}

/// The float32 tensors of a safetensors file (header: 8-byte length, JSON), by name.
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
            let at = |i: usize| v["data_offsets"][i].as_u64().unwrap() as usize;
            let values = data[at(0)..at(1)]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k.clone(), values)
        })
        .collect()
}

/// The largest difference between two runs' checkpoints.
fn max_difference(runs: &Path, a: &str, b: &str) -> f32 {
    let file = |run: &str| runs.join(run).join("checkpoint.safetensors");
    let (a, b) = (tensors(&file(a)), tensors(&file(b)));
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    a.iter()
        .flat_map(|(k, x)| {
            let y = &b[k];
            assert_eq!(x.len(), y.len(), "{k}");
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0, f32::max)
}

/// The overlapped reducer is attached with `buckets` buckets, and from the second step
/// (launch order learnt from the first) every bucket but the last to complete was
/// launched before backward produced its last gradient: it ran under backward.
fn assert_overlapped(rank0: &str, buckets: usize) {
    assert!(
        rank0.contains(&format!("overlapped with backward, {buckets} bucket(s)")),
        "{rank0}"
    );
    let under = buckets - 1;
    assert!(
        rank0.contains(&format!(
            "step 2: {under} of {buckets} gradient buckets launched under backward"
        )),
        "{rank0}"
    );
}

/// 2 ranks: overlap with tiny buckets, overlap with the default 25 MiB (one bucket), and
/// the flat fallback give identical weights; they equal one process × batch 64.
#[test]
fn two_ranks_overlapped_train_as_the_flat_all_reduce_and_as_one_process() {
    let cwd = tempfile::tempdir().unwrap();
    config(cwd.path());
    let deadline = Duration::from_secs(120);
    let tiny = run_ranks(cwd.path(), 2, "tiny", &[TINY_BUCKETS], deadline);
    assert_overlapped(&tiny[0], 3);
    let one = run_ranks(cwd.path(), 2, "one", &[], deadline);
    assert_overlapped(&one[0], 1);
    let flat = run_ranks(
        cwd.path(),
        2,
        "flat",
        &["distributed.overlap=false"],
        deadline,
    );
    assert!(!flat[0].contains("overlapped with backward"), "{}", flat[0]);
    sat(
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

    let runs = cwd.path().join("runs");
    for run in ["tiny", "one"] {
        let diff = max_difference(&runs, run, "flat");
        eprintln!("2 ranks, overlap ({run}) vs flat: largest difference {diff:e}");
        assert_eq!(diff, 0.0, "{run}: overlap changed the weights by {diff}");
    }
    let diff = max_difference(&runs, "tiny", "single");
    eprintln!("2 ranks × 32 (overlap) vs 1 process × 64: largest difference {diff:e}");
    assert!(diff < 1e-5, "parameters differ by {diff}");
}

/// 3 ranks (Gloo's sum of three may round in another order per bucket): overlap with
/// tiny buckets and the flat fallback agree within 1e-6.
#[test]
fn three_ranks_overlapped_train_as_the_flat_all_reduce() {
    let cwd = tempfile::tempdir().unwrap();
    config(cwd.path());
    let deadline = Duration::from_secs(120);
    let tiny = run_ranks(cwd.path(), 3, "tiny", &[TINY_BUCKETS], deadline);
    assert_overlapped(&tiny[0], 3);
    run_ranks(
        cwd.path(),
        3,
        "flat",
        &["distributed.overlap=false"],
        deadline,
    );
    let diff = max_difference(&cwd.path().join("runs"), "tiny", "flat");
    eprintln!("3 ranks, overlap vs flat: largest difference {diff:e}");
    assert!(diff < 1e-6, "overlap changed the weights by {diff}");
}

/// A ResNet (BatchNorm, per-rank statistics): its flat gradient is in the order of the
/// parameter names, where `stem` sorts after the stages though its gradient comes last.
/// The first step launches nothing before backward ends; from the second, the launch
/// order learnt from the first puts every bucket but the last under backward. Overlap
/// and the flat fallback still train identical weights.
#[test]
fn a_resnet_learns_its_launch_order_and_trains_as_the_flat_all_reduce() {
    let cwd = tempfile::tempdir().unwrap();
    config(cwd.path());
    let deadline = Duration::from_secs(120);
    let model = ["model.arch=resnet18", "model.width=4", "train.epochs=1"];
    let mut sets = model.to_vec();
    sets.push("distributed.bucket_mb=0.02");
    let tiny = run_ranks(cwd.path(), 2, "tiny", &sets, deadline);
    let buckets: usize = tiny[0]
        .split("overlapped with backward, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", tiny[0]));
    assert!(buckets >= 4, "{}", tiny[0]);
    assert!(
        tiny[0].contains(&format!("step 1: 0 of {buckets} gradient buckets")),
        "{}",
        tiny[0]
    );
    assert_overlapped(&tiny[0], buckets);
    let mut sets = model.to_vec();
    sets.push("distributed.overlap=false");
    run_ranks(cwd.path(), 2, "flat", &sets, deadline);
    let diff = max_difference(&cwd.path().join("runs"), "tiny", "flat");
    eprintln!("2 ranks, resnet18, overlap vs flat: largest difference {diff:e}");
    assert_eq!(diff, 0.0, "overlap changed the weights by {diff}");
}
