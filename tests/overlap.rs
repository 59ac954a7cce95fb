//! The gradient all-reduce overlapped with the backward pass (`[distributed] overlap`):
//! bucketed all-reduces launched from autograd hooks train the weights the one flat
//! all-reduce after backward trains (identical bits on 2 ranks, within 1e-6 on 3), and
//! the weights one process trains on the global batch (within 1e-5). Ranks run the real
//! binary over Gloo on 127.0.0.1 with a hard deadline; a guard kills them on failure.
use sat_tests::ranks::{free_port, spawn_ranks_with};
use sat_tests::sat;
use std::path::Path;
use std::time::{Duration, Instant};

/// Tiny buckets (105 bytes): every parameter of the `mlp` gets a bucket of its own
/// (but `head.bias` shares one with `fc1.weight`), so several all-reduces run per step.
const TINY_BUCKETS: &str = "distributed.bucket_mb=0.0001";


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

/// Runs `world` ranks of `sat-host run --config c.toml --set name=NAME sets…` (debug
/// log) and returns each rank's stderr; every rank must succeed within `deadline`.
fn run_ranks(
    cwd: &Path,
    world: usize,
    name: &str,
    sets: &[&str],
    deadline: Duration,
) -> Vec<String> {
    let name_set = format!("name={name}");
    let mut args = vec!["run", "--config", "c.toml", "--set", &name_set];
    for s in sets {
        args.extend(["--set", s]);
    }
    let start = Instant::now();
    let (procs, logs) =
        spawn_ranks_with(cwd, world, free_port(), &args, |_| Vec::new(), &[("SAT_LOG", "debug")]);
    let done = procs.wait(deadline, &logs);
    for (rank, d) in done.iter().enumerate() {
        assert_eq!(d.code, Some(0), "{name}: rank {rank}\n{}", d.stderr);
    }
    eprintln!("{name}: {world} ranks in {:.1} s", start.elapsed().as_secs_f64());
    done.into_iter().map(|d| d.stderr).collect()
}

/// The largest difference between two runs' checkpoints.
fn max_difference(runs: &Path, a: &str, b: &str) -> f32 {
    let file = |run: &str| runs.join(run).join("checkpoint.safetensors");
    sat_tests::ranks::max_difference(&file(a), &file(b))
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
