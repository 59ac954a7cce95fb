//! `ProcessGroup::differentiable_sum` on 1 and 2 processes over Gloo on 127.0.0.1: this
//! test binary re-executes itself as the ranks (the `worker` test does a rank's part when
//! `SAT_DSUM_ROLE` is set, nothing otherwise), with a hard deadline after which the
//! children are killed.

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sat_distributed::{Backend, Launch, ProcessGroup};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "SAT_DSUM_ROLE";
const RESULT: &str = "SAT-DSUM-RESULT";

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).contiguous().view([-1])).unwrap()
}

/// The rank's part; a no-op in a normal test run.
#[test]
fn worker() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let launch = Launch::from_env().unwrap().expect("a distributed launch");
    let pg = ProcessGroup::new(&launch, Backend::Gloo, Duration::from_secs(20)).unwrap();
    let sum = pg.differentiable_sum().unwrap();
    let (rank, world) = (pg.rank(), pg.world_size());
    assert_eq!(role, format!("world{world}"));
    let c = (rank + 1) as f64;
    // The total of c over the ranks (1 with one rank, 3 with two).
    let total: f64 = (1..=world).map(|r| r as f64).sum();

    // Forward: the sum, in a new tensor; the input is kept. Non-contiguous input.
    let x = Tensor::from_slice(&[c, 2.0 * c, 3.0 * c, 4.0 * c])
        .view([2, 2])
        .tr()
        .set_requires_grad(true);
    let y = sum.all_reduce(&x).unwrap();
    assert_eq!(values(&y), [total, 3.0 * total, 2.0 * total, 4.0 * total]);
    assert_eq!(values(&x), [c, 3.0 * c, 2.0 * c, 4.0 * c]);
    assert!(y.requires_grad());

    // Backward: rank r's loss weighs y by w_r; every rank's x gets Σ_r w_r.
    let w = Tensor::from_slice(&[c, 10.0 * c, 100.0 * c, 1000.0 * c]).view([2, 2]);
    (&y * &w).sum(Kind::Double).backward();
    let g = x.grad();
    assert_eq!(
        values(&g),
        [total, 10.0 * total, 100.0 * total, 1000.0 * total]
    );

    // Double backward (create_graph): L_r = c_r Σ y², so dL/dx = 2 (Σ_r c_r) y, and the
    // gradient of Σ_r Σ_i (dL/dx_r)_i with respect to x_r is 2 · W · Σ_r c_r.
    let x = Tensor::from_slice(&[c, -c]).set_requires_grad(true);
    let y = sum.all_reduce(&x).unwrap();
    let loss = (&y * &y).sum(Kind::Double) * c;
    let g = Tensor::run_backward(&[&loss], &[&x], true, true).remove(0);
    assert_eq!(values(&g), values(&(y.detach() * (2.0 * total))));
    let h = Tensor::run_backward(&[&g.sum(Kind::Double)], &[&x], false, false).remove(0);
    assert_eq!(values(&h), [2.0 * world as f64 * total; 2]);

    // Without a gradient (no_grad, or an input that needs none) it is a plain sum.
    let z = tch::no_grad(|| sum.all_reduce(&Tensor::from_slice(&[c as f32])).unwrap());
    assert!(!z.requires_grad());
    assert_eq!(values(&z), [total]);

    // The trainer's own group still works alongside (its collectives are separate).
    let t = Tensor::from_slice(&[1.0f32]);
    pg.all_reduce_sum(&t).unwrap();
    assert_eq!(values(&t), [world as f64]);
    // An undefined tensor is an error, not a crash; the sum goes on working.
    let err = sum.all_reduce(&Tensor::new()).unwrap_err().to_string();
    assert!(err.contains("undefined tensor"), "{err}");
    let v = sum
        .all_reduce(&Tensor::ones([3], (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(values(&v), [world as f64; 3]);
    println!("{RESULT} ok rank={rank}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Children killed (and reaped) on drop.
struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `world` ranks of the `worker` test to the end (at most 90 s) and checks each
/// reports success.
fn run(world: usize) {
    if !Backend::Gloo.is_available() {
        eprintln!("skipped: {}", Backend::Gloo.build_status());
        return;
    }
    let port = free_port().to_string();
    let exe = std::env::current_exe().unwrap();
    let mut kids = Kill(Vec::new());
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
        for var in ["LOCAL_RANK", "LOCAL_WORLD_SIZE", "GLOO_SOCKET_IFNAME"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .env(ROLE, format!("world{world}"))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        kids.0.push(child);
    }
    let start = Instant::now();
    while kids.0.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "ranks still running after 90 s; killed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let outputs: Vec<Output> = std::mem::take(&mut kids.0)
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (rank, out) in outputs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("{RESULT} ok rank={rank}")),
            "rank {rank} of {world} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn one_process_is_the_identity_with_the_identity_gradient() {
    run(1);
}

#[test]
fn two_ranks_sum_forward_and_sum_gradients_backward() {
    run(2);
}
