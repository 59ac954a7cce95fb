//! Multi-process tests on 127.0.0.1: this test binary re-executes itself as the ranks
//! (the `worker` test does the rank's part when `SAT_DIST_TEST_ROLE` is set and nothing
//! otherwise). Every run is bounded by a hard deadline, after which the children are
//! killed; children are also killed when a test fails.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sat_distributed::{Backend, Error, Launch, ProcessGroup};
use tch::{Kind, Tensor};

const ROLE: &str = "SAT_DIST_TEST_ROLE";
const TIMEOUT_MS: &str = "SAT_DIST_TEST_TIMEOUT_MS";
const RESULT: &str = "SAT-RESULT";

// ---------------------------------------------------------------- the ranks' side

/// The rank's part of a scenario; a no-op in a normal test run.
#[test]
fn worker() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let timeout = Duration::from_millis(std::env::var(TIMEOUT_MS).unwrap().parse().unwrap());
    let launch = Launch::from_env()
        .expect("launch variables")
        .expect("a distributed launch");
    match role.as_str() {
        "collectives" => collectives(&launch, timeout),
        "expect-join-error" => {
            let start = Instant::now();
            match ProcessGroup::new(&launch, Backend::Gloo, timeout) {
                Ok(_) => println!("{RESULT} unexpected-ok"),
                Err(e) => println!(
                    "{RESULT} err elapsed_ms={} {e}",
                    start.elapsed().as_millis()
                ),
            }
        }
        "dies" => {
            let pg = ProcessGroup::new(&launch, Backend::Gloo, timeout).unwrap();
            pg.barrier().unwrap();
            if pg.rank() == 1 {
                // Vanish without leaving the group.
                println!("{RESULT} leaving");
                std::process::exit(0);
            }
            thread::sleep(Duration::from_millis(300));
            let start = Instant::now();
            let t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            match pg.all_reduce_sum(&t).and_then(|()| pg.all_reduce_sum(&t)) {
                Ok(()) => println!("{RESULT} unexpected-ok"),
                Err(e) => println!(
                    "{RESULT} err elapsed_ms={} {e}",
                    start.elapsed().as_millis()
                ),
            }
        }
        "stalls" => {
            let pg = ProcessGroup::new(&launch, Backend::Gloo, timeout).unwrap();
            pg.barrier().unwrap();
            if pg.rank() == 1 {
                // Alive but never joining the next collective.
                println!("{RESULT} stalling");
                thread::sleep(timeout * 2 + Duration::from_secs(1));
                std::process::exit(0);
            }
            let start = Instant::now();
            let t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            match pg.all_reduce_sum(&t) {
                Ok(()) => println!("{RESULT} unexpected-ok"),
                Err(e) => println!(
                    "{RESULT} err elapsed_ms={} {e}",
                    start.elapsed().as_millis()
                ),
            }
            // Leaving the group after a failed collective does not wait for the peer.
            let start = Instant::now();
            drop(pg);
            println!("{RESULT}-drop elapsed_ms={}", start.elapsed().as_millis());
        }
        other => panic!("unknown role {other}"),
    }
}

fn values<T: tch::kind::Element + Copy>(t: &Tensor) -> Vec<T> {
    Vec::<T>::try_from(t).unwrap()
}

fn collectives(launch: &Launch, timeout: Duration) {
    let pg = ProcessGroup::new(launch, Backend::Gloo, timeout).unwrap();
    assert_eq!(pg.world_size(), 2);
    let rank = pg.rank();
    let r = rank as f64;

    // all_reduce_sum, in place, through a caller's handle.
    let t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
    pg.all_reduce_sum(&t).unwrap();
    assert_eq!(values::<f64>(&t), [3.0, 30.0]);

    // A flat gradient-sized tensor.
    let g = Tensor::full([1 << 20], r + 1.0, (Kind::Float, tch::Device::Cpu));
    pg.all_reduce_sum(&g).unwrap();
    assert_eq!(g.min().double_value(&[]), 3.0);
    assert_eq!(g.max().double_value(&[]), 3.0);

    // all_reduce_mean.
    let m = Tensor::from_slice(&[r as f32, 2.0 * r as f32 + 1.0]);
    pg.all_reduce_mean(&m).unwrap();
    assert_eq!(values::<f32>(&m), [0.5, 2.0]);
    let i = Tensor::from_slice(&[1i64]);
    assert!(matches!(
        pg.all_reduce_mean(&i),
        Err(Error::InvalidArgument(_))
    ));

    // broadcast from rank 1.
    let b = Tensor::from_slice(&[rank as i64 * 7 + 1; 3]);
    pg.broadcast(&b, 1).unwrap();
    assert_eq!(values::<i64>(&b), [8, 8, 8]);
    assert!(matches!(
        pg.broadcast(&b, 2),
        Err(Error::InvalidArgument(_))
    ));

    // all_gather of a small int64 tensor.
    let gathered = pg
        .all_gather(&Tensor::from_slice(&[rank as i64 * 10, 1]))
        .unwrap();
    assert_eq!(
        gathered.iter().map(values::<i64>).collect::<Vec<_>>(),
        [vec![0, 1], vec![10, 1]]
    );

    // A C++ exception (here: an undefined tensor) comes back as an error; the group still works.
    let err = pg.all_reduce_sum(&Tensor::new()).unwrap_err().to_string();
    assert!(
        err.contains("all_reduce_sum") && err.contains("undefined tensor"),
        "{err}"
    );
    // Gloo of torch 2.13 accepts a non-contiguous tensor and still reduces in place.
    let nc = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
        .view([2, 2])
        .tr();
    pg.all_reduce_sum(&nc).unwrap();
    assert_eq!(
        values::<f32>(&nc.contiguous().view([-1])),
        [2.0, 6.0, 4.0, 8.0]
    );

    // Digests and the store.
    assert_eq!(
        pg.exchange_digest(&format!("digest-{rank}")).unwrap(),
        ["digest-0", "digest-1"]
    );
    pg.ensure_same_digest("same-config").unwrap();
    match pg.ensure_same_digest(&format!("config-{rank}")) {
        Err(Error::DigestMismatch { values }) => assert_eq!(values, ["config-0", "config-1"]),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    if rank == 0 {
        pg.store_set("greeting", b"hello").unwrap();
    }
    assert_eq!(pg.store_get("greeting").unwrap(), b"hello");

    let t = Tensor::from_slice(&[1.0f32]);
    pg.all_reduce_sum(&t).unwrap();
    assert_eq!(values::<f32>(&t), [2.0]);
    pg.barrier().unwrap();
    println!("{RESULT} ok rank={rank}");
}

// ---------------------------------------------------------------- the parent's side

/// A free port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rank {
    child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

/// Spawned ranks; any still running when this is dropped (a failed assertion, a deadline)
/// are killed and reaped.
struct Ranks(Vec<Rank>);

impl Drop for Ranks {
    fn drop(&mut self) {
        for r in &mut self.0 {
            if let Ok(None) = r.child.try_wait() {
                let _ = r.child.kill();
            }
            let _ = r.child.wait();
        }
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn result_line(&self) -> &str {
        // The harness may print `test worker ... ` on the same line.
        self.stdout
            .lines()
            .find_map(|l| l.find(RESULT).map(|i| &l[i..]))
            .unwrap_or_else(|| {
                panic!(
                    "no {RESULT} line\nstdout:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }
}

fn spawn(role: &str, ranks: &[(usize, u16)], world_size: usize, timeout: Duration) -> Ranks {
    let exe = std::env::current_exe().unwrap();
    let mut spawned = Ranks(Vec::new());
    for &(rank, port) in ranks {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
        for var in [
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "GLOO_SOCKET_IFNAME",
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "SLURM_LOCALID",
        ] {
            cmd.env_remove(var);
        }
        cmd.env(ROLE, role)
            .env(TIMEOUT_MS, timeout.as_millis().to_string())
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let drain = |mut pipe: Box<dyn Read + Send>| {
            thread::spawn(move || {
                let mut s = String::new();
                let _ = pipe.read_to_string(&mut s);
                s
            })
        };
        let out = Some(drain(Box::new(child.stdout.take().unwrap())));
        let err = Some(drain(Box::new(child.stderr.take().unwrap())));
        spawned.0.push(Rank { child, out, err });
    }
    spawned
}

/// Waits for every rank until `deadline`; past it, kills them all and fails.
fn wait(mut ranks: Ranks, deadline: Duration) -> Vec<Finished> {
    let start = Instant::now();
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; ranks.0.len()];
    while statuses.iter().any(Option::is_none) {
        for (r, s) in ranks.0.iter_mut().zip(statuses.iter_mut()) {
            if s.is_none() {
                *s = r.child.try_wait().unwrap();
            }
        }
        if start.elapsed() > deadline {
            drop(ranks); // kills the children
            panic!("ranks still running after the hard deadline {deadline:?}; killed");
        }
        thread::sleep(Duration::from_millis(50));
    }
    ranks
        .0
        .iter_mut()
        .zip(statuses)
        .map(|(r, status)| Finished {
            status: status.unwrap(),
            stdout: r.out.take().unwrap().join().unwrap(),
            stderr: r.err.take().unwrap().join().unwrap(),
        })
        .collect()
}

/// Parses `SAT-RESULT err elapsed_ms=N message`.
fn join_error(f: &Finished) -> (Duration, String) {
    let line = f.result_line();
    let rest = line
        .strip_prefix(&format!("{RESULT} err elapsed_ms="))
        .unwrap_or_else(|| panic!("expected an error, got {line:?}\nstderr:\n{}", f.stderr));
    let (ms, msg) = rest.split_once(' ').unwrap();
    (Duration::from_millis(ms.parse().unwrap()), msg.to_owned())
}

/// Generous bound on how long a failure may take: c10d's own timeout plus its connect
/// retries, on a loaded 2-core machine.
fn bound(timeout: Duration) -> Duration {
    timeout * 2 + Duration::from_secs(5)
}

fn gloo() -> bool {
    if !Backend::Gloo.is_available() {
        eprintln!("skipped: {}", Backend::Gloo.build_status());
        return false;
    }
    true
}

#[test]
fn two_ranks_reduce_broadcast_gather_and_exchange() {
    if !gloo() {
        return;
    }
    let port = free_port();
    let ranks = spawn(
        "collectives",
        &[(0, port), (1, port)],
        2,
        Duration::from_secs(20),
    );
    for (rank, f) in wait(ranks, Duration::from_secs(90)).iter().enumerate() {
        assert!(
            f.status.success() && f.stdout.contains(&format!("{RESULT} ok rank={rank}")),
            "rank {rank} failed ({})\nstdout:\n{}\nstderr:\n{}",
            f.status,
            f.stdout,
            f.stderr
        );
    }
}

#[test]
fn a_rank_alone_fails_within_the_timeout() {
    if !gloo() {
        return;
    }
    let timeout = Duration::from_secs(3);
    let ranks = spawn("expect-join-error", &[(0, free_port())], 2, timeout);
    let done = wait(ranks, Duration::from_secs(40));
    let (elapsed, msg) = join_error(&done[0]);
    eprintln!("rank 0 alone: {msg} (after {elapsed:?})");
    assert!(elapsed < bound(timeout), "took {elapsed:?}");
    assert!(
        msg.contains("TCPStore rendezvous") && msg.contains("timeout 3s"),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("timed out"),
        "c10d's own reason is kept: {msg}"
    );
}

#[test]
fn a_wrong_master_port_fails_within_the_timeout() {
    if !gloo() {
        return;
    }
    let timeout = Duration::from_secs(3);
    let (good, wrong) = (free_port(), free_port());
    assert_ne!(good, wrong);
    let ranks = spawn("expect-join-error", &[(0, good), (1, wrong)], 2, timeout);
    let done = wait(ranks, Duration::from_secs(40));
    for (rank, f) in done.iter().enumerate() {
        let (elapsed, msg) = join_error(f);
        eprintln!("rank {rank}: {msg} (after {elapsed:?})");
        assert!(elapsed < bound(timeout), "rank {rank} took {elapsed:?}");
        assert!(
            msg.contains("timeout 3s") && msg.to_lowercase().contains("timed out"),
            "rank {rank}: {msg}"
        );
    }
    let (_, msg1) = join_error(&done[1]);
    assert!(
        msg1.contains(&format!("connecting to 127.0.0.1:{wrong}")),
        "{msg1}"
    );
}

#[test]
fn a_rank_that_dies_fails_the_next_collective() {
    if !gloo() {
        return;
    }
    let timeout = Duration::from_secs(3);
    let port = free_port();
    let ranks = spawn("dies", &[(0, port), (1, port)], 2, timeout);
    let done = wait(ranks, Duration::from_secs(40));
    assert!(
        done[1].stdout.contains(&format!("{RESULT} leaving")),
        "{}",
        done[1].stderr
    );
    let (elapsed, msg) = join_error(&done[0]);
    eprintln!("rank 0 after rank 1 died: {msg} (after {elapsed:?})");
    assert!(elapsed < bound(timeout), "took {elapsed:?}");
    assert!(
        msg.contains("all_reduce_sum") && msg.contains("timeout 3s"),
        "{msg}"
    );
}

#[test]
fn a_rank_that_stalls_fails_the_collective_after_the_timeout() {
    if !gloo() {
        return;
    }
    let timeout = Duration::from_secs(3);
    let port = free_port();
    let ranks = spawn("stalls", &[(0, port), (1, port)], 2, timeout);
    let done = wait(ranks, Duration::from_secs(40));
    assert!(
        done[1].stdout.contains(&format!("{RESULT} stalling")),
        "{}",
        done[1].stderr
    );
    let (elapsed, msg) = join_error(&done[0]);
    eprintln!("rank 0 while rank 1 stalls: {msg} (after {elapsed:?})");
    assert!(
        elapsed >= timeout - Duration::from_millis(500),
        "failed before the timeout: {elapsed:?}"
    );
    assert!(elapsed < bound(timeout), "took {elapsed:?}");
    assert!(
        msg.contains("all_reduce_sum") && msg.contains("timeout 3s"),
        "{msg}"
    );
    assert!(
        msg.to_lowercase().contains("timed out"),
        "c10d's own reason is kept: {msg}"
    );
    let drop_ms: u64 = done[0]
        .stdout
        .split(&format!("{RESULT}-drop elapsed_ms="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no drop line: {}", done[0].stdout));
    assert!(drop_ms < 2000, "dropping the group took {drop_ms} ms");
}

#[test]
fn a_backend_left_out_is_a_clear_error() {
    let launch = Launch::from_lookup(|k| {
        match k {
            "RANK" => Some("0"),
            "WORLD_SIZE" => Some("1"),
            "MASTER_ADDR" => Some("127.0.0.1"),
            "MASTER_PORT" => Some("1"),
            _ => None,
        }
        .map(str::to_owned)
    })
    .unwrap()
    .unwrap();
    for backend in [Backend::Gloo, Backend::Nccl] {
        if backend.is_available() {
            continue;
        }
        let err = ProcessGroup::new(&launch, backend, Duration::from_secs(1)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Unavailable { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!("built without {backend}")),
            "{msg}"
        );
        if backend == Backend::Gloo {
            assert!(msg.contains("install libgloo-dev and rebuild"), "{msg}");
        }
    }
}

#[test]
fn nccl_without_a_gpu_is_an_error_not_a_crash() {
    if !Backend::Nccl.is_available() || tch::Cuda::is_available() {
        eprintln!(
            "skipped: NCCL {} / CUDA available: {}",
            Backend::Nccl.build_status(),
            tch::Cuda::is_available()
        );
        return;
    }
    let port = free_port().to_string();
    let launch = Launch::from_lookup(|k| {
        match k {
            "RANK" => Some("0"),
            "WORLD_SIZE" => Some("1"),
            "MASTER_ADDR" => Some("127.0.0.1"),
            "MASTER_PORT" => Some(port.as_str()),
            _ => None,
        }
        .map(str::to_owned)
    })
    .unwrap()
    .unwrap();
    let start = Instant::now();
    let err = ProcessGroup::new(&launch, Backend::Nccl, Duration::from_secs(3)).unwrap_err();
    eprintln!("NCCL without a GPU: {err} (after {:?})", start.elapsed());
    assert!(
        matches!(
            err,
            Error::C10d {
                op: "process group creation",
                ..
            }
        ),
        "{err}"
    );
}
