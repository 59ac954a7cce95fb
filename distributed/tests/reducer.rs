//! The overlapped gradient reducer on 2 ranks over Gloo on 127.0.0.1: this test binary
//! re-executes itself as the ranks (the `worker` test does a rank's part when
//! `SAT_REDUCER_TEST_ROLE` is set, nothing otherwise), under a hard deadline after which
//! they are killed.
//!
//! Each rank holds parameters `unused` (no gradient ever), `w1`, `w2` whose gradients are
//! views of one flat tensor, as sat's optimiser binds them, with one bucket per parameter:
//! the hooks launch `w2`'s and `w1`'s all-reduces during backward, finalize the unused
//! one's; the result is the mean of both ranks' gradients, bit for bit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sat_distributed::{Backend, GradientReducer, Launch, ProcessGroup};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "SAT_REDUCER_TEST_ROLE";
const RESULT: &str = "SAT-RESULT";

/// Three leaves whose gradients are views of one flat gradient (sat's `Flat::bind`).
fn parameters() -> (Vec<Tensor>, Tensor) {
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(3);
    let params: Vec<Tensor> = [vec![5i64], vec![4, 8], vec![3, 4]]
        .iter()
        .map(|s| Tensor::randn(s.as_slice(), opts).set_requires_grad(true))
        .collect();
    let total: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let flat = Tensor::zeros([total], opts);
    // Every gradient defined (zero), then rebound to its view of `flat`.
    params
        .iter()
        .map(|p| p.sum(Kind::Float) * 0.0)
        .fold(Tensor::zeros([], opts), |a, b| a + b)
        .backward();
    let mut offset = 0;
    tch::no_grad(|| {
        for p in &params {
            let n = p.numel() as i64;
            let _ = p
                .grad()
                .set_source_tensor_(&flat.narrow(0, offset, n).view(p.size().as_slice()));
            offset += n;
        }
    });
    (params, flat)
}

/// The loss of rank `r`'s batch (deterministic per rank); `unused` takes no part.
fn loss(params: &[Tensor], r: usize) -> Tensor {
    let x = Tensor::arange_start(0, 16, (Kind::Float, Device::Cpu)).view([2, 8]) / (3.0 + r as f64);
    let h = x.matmul(&params[1].tr()).tanh();
    h.matmul(&params[2].tr())
        .pow_tensor_scalar(2)
        .sum(Kind::Float)
}

/// The mean over both ranks of the gradients, computed locally on detached copies.
fn expected(params: &[Tensor]) -> Tensor {
    let copies: Vec<Tensor> = params
        .iter()
        .map(|p| p.detach().copy().set_requires_grad(true))
        .collect();
    let grads: Vec<Tensor> = (0..2)
        .map(|r| {
            let gs = Tensor::run_backward(&[loss(&copies, r)], &copies[1..], false, false);
            let mut all = vec![copies[0].zeros_like().reshape([-1])];
            all.extend(gs.iter().map(|g| g.reshape([-1])));
            Tensor::cat(&all, 0)
        })
        .collect();
    (&grads[0] + &grads[1]) / 2.0
}

fn worker_part(launch: &Launch) {
    let pg = ProcessGroup::new(launch, Backend::Gloo, Duration::from_secs(20)).unwrap();
    let (params, flat) = parameters();
    let mut reducer = GradientReducer::new(&pg, &params, &flat, 1).unwrap();
    assert_eq!(reducer.bucket_count(), 3);
    // A second reducer on the same parameters is refused (one hook a parameter).
    let again = GradientReducer::new(&pg, &params, &flat, 1)
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("already has a post-accumulate-grad hook"),
        "{again}"
    );
    for step in 0..2 {
        let _ = flat.shallow_clone().zero_();
        let want = expected(&params);
        loss(&params, pg.rank()).backward();
        let done = reducer.finalize(&flat).unwrap();
        assert_eq!(done.buckets, 3);
        // w2 and w1 launched under backward; the unused parameter's bucket by finalize.
        assert_eq!(done.launched_during_backward, 2, "step {step}");
        let diff = f64::try_from((&flat - &want).abs().max()).unwrap();
        assert_eq!(diff, 0.0, "step {step}: reduced gradient differs by {diff}");
        // The gradients are still the views: the parameters see the reduced values.
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad().reshape([-1])).collect();
        assert!(Tensor::cat(&grads, 0).equal(&flat), "step {step}");
    }
    // Two backward passes before finalize: an error from finalize, on every rank alike,
    // and the next step is whole again.
    let _ = flat.shallow_clone().zero_();
    loss(&params, pg.rank()).backward();
    loss(&params, pg.rank()).backward();
    let twice = reducer.finalize(&flat).unwrap_err().to_string();
    assert!(twice.contains("twice in one step"), "{twice}");
    let _ = flat.shallow_clone().zero_();
    let want = expected(&params);
    loss(&params, pg.rank()).backward();
    reducer.finalize(&flat).unwrap();
    assert_eq!(f64::try_from((&flat - &want).abs().max()).unwrap(), 0.0);
    // Dropping the reducer removes its hooks: a new one may be registered.
    drop(reducer);
    GradientReducer::new(&pg, &params, &flat, 1 << 20).unwrap();
    pg.barrier().unwrap();
    println!("{RESULT} ok");
}

/// A rank's part; a no-op in a normal test run.
#[test]
fn worker() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let launch = Launch::from_env().unwrap().unwrap();
    worker_part(&launch);
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn two_ranks_reduce_buckets_during_backward_and_unused_ones_at_finalize() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = std::env::current_exe().unwrap();
    let mut ranks = Kill(Vec::new());
    for rank in 0..2 {
        let child = Command::new(&exe)
            .args(["worker", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, "reducer")
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("LOCAL_RANK")
            .env_remove("SLURM_PROCID")
            .env_remove("SLURM_NTASKS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ranks.0.push(child);
    }
    let start = Instant::now();
    while ranks.0.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ranks still running after 60 s; killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (rank, child) in std::mem::take(&mut ranks.0).into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("{RESULT} ok")),
            "rank {rank}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
