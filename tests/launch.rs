//! A quiet launch: a correct torchrun or Slurm launch of the real binary prints no error
//! line, and the c10d TCPStore binds only where it must. Under torchrun the agent serves
//! the store and every rank connects to it as a client (nothing binds `MASTER_PORT`
//! twice, so c10d has no bind failure to log); under Slurm rank 0 serves it, on the
//! loopback address alone when `MASTER_ADDR` is one.
//!
//! Everything runs on 127.0.0.1 with tiny runs (one step, one epoch, width 4). Every
//! process has a hard deadline and is stopped when the test fails: torchrun by SIGTERM
//! (it stops its workers) and then SIGKILL; its workers also give up within their
//! 30 s store timeout once the agent's store is gone.
use sat_tests::ranks::free_port;
use sat_tests::{metrics, sat_host, target_dir, TINY};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bound on one launch, start to finish.
const DEADLINE: Duration = Duration::from_secs(120);

/// The lines of `text` that read as errors: c10d's glog lines (`[E…`, `[F…`), torch's
/// Python log lines (`E1207 …`), sat's own (`ERROR`), a traceback, or a bind failure.
fn error_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|line| {
            let l = line.trim_start();
            // glog's level letter is followed by the date, MMDD.
            let glog =
                |rest: &str| rest.len() >= 4 && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit);
            let c10d = (l.starts_with("[E") || l.starts_with("[F")) && glog(&l[2..]);
            let python = (l.starts_with('E') || l.starts_with('F'))
                && l.len() > 5
                && glog(&l[1..])
                && l.as_bytes()[5] == b' ';
            c10d || python
                || l.contains("ERROR")
                || l.contains("Traceback")
                || l.to_ascii_lowercase().contains("failed to bind")
        })
        .collect()
}

/// Processes stopped (SIGTERM, then SIGKILL after 15 s) and reaped when dropped, so a
/// failing test leaves none behind.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let until = Instant::now() + Duration::from_secs(15);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Waits for every process within [`DEADLINE`] of `start`; their exit codes and the
    /// text of `logs`. Panics (and so stops them) past the deadline.
    fn wait(mut self, start: Instant, logs: &[PathBuf]) -> (Vec<Option<i32>>, Vec<String>) {
        let read = || -> Vec<String> {
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect()
        };
        let mut codes = vec![None; self.0.len()];
        while codes.iter().any(Option::is_none) {
            for (code, c) in codes.iter_mut().zip(&mut self.0) {
                if code.is_none() {
                    if let Some(status) = c.try_wait().expect("try_wait") {
                        *code = Some(status.code());
                    }
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "still running after {DEADLINE:?}; stopped\n{}",
                read().join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0.clear();
        (codes.into_iter().map(Option::flatten).collect(), read())
    }
}

/// `sat-host run` with tiny settings on the CPU, one thread a process.
fn run_args() -> Vec<String> {
    let mut args: Vec<String> = ["run", "--set", "device=cpu"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(TINY.iter().map(|s| s.to_string()));
    args.extend(["--set".into(), "distributed.timeout_seconds=30".into()]);
    args
}

/// A sat-host command in `cwd` with a clean environment for logs and plugins.
fn sat_command(cwd: &Path) -> Command {
    let mut cmd = Command::new(sat_host());
    cmd.args(run_args())
        .current_dir(cwd)
        .env_remove("SAT_PLUGIN_PATH")
        .env_remove("SAT_LOG")
        .env_remove("RUST_LOG")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null());
    cmd
}

/// Launches two ranks under torchrun with `rdzv` arguments (on 127.0.0.1) and asserts
/// that the run completes on 2 ranks and that torchrun's stderr, which the workers
/// share, holds no error line. `None` when torchrun is not installed.
fn torchrun_is_quiet(rdzv: &[&str]) -> Option<()> {
    let torchrun = target_dir().join("../../.venv/bin/torchrun");
    if !torchrun.exists() {
        eprintln!("skipped: no {}", torchrun.display());
        return None;
    }
    let cwd = tempfile::tempdir().unwrap();
    let log = cwd.path().join("torchrun.log");
    let start = Instant::now();
    let child = Command::new(&torchrun)
        .args(["--nnodes", "1", "--nproc-per-node", "2"])
        .args(rdzv)
        .args(["--local-addr", "127.0.0.1", "--no-python"])
        .arg(sat_host())
        .args(run_args())
        .current_dir(cwd.path())
        .env_remove("SAT_PLUGIN_PATH")
        .env_remove("SAT_LOG")
        .env_remove("RUST_LOG")
        .env_remove("TORCH_DISABLE_SHARE_RDZV_TCP_STORE")
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start torchrun");
    let (codes, logs) = Procs(vec![child]).wait(start, std::slice::from_ref(&log));
    let stderr = &logs[0];
    eprintln!("torchrun {rdzv:?}: {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(codes[0], Some(0), "{stderr}");
    let m = metrics(&cwd.path().join("runs/run"));
    assert_eq!(m["status"], "completed", "{stderr}");
    assert_eq!(m["world_size"], 2, "{stderr}");
    // Both ranks joined through the agent's store (rank 0 says so at info level).
    assert!(stderr.contains("c10d: joined rank 0 of 2"), "{stderr}");
    assert_eq!(error_lines(stderr), Vec::<&str>::new(), "{stderr}");
    Some(())
}

/// torchrun's static rendezvous (`--master-addr/--master-port`): the agent of node 0
/// serves the store on `MASTER_PORT`; before, rank 0 tried to bind it too and c10d
/// logged `[E… TCPStore.cpp:…] The server socket on PORT has failed to bind.
/// TORCHELASTIC_USE_AGENT_STORE is enabled so ignoring the error.`
#[test]
fn a_torchrun_launch_with_a_master_port_prints_no_error_line() {
    let port = free_port().to_string();
    torchrun_is_quiet(&["--master-addr", "127.0.0.1", "--master-port", &port]);
}

/// torchrun's c10d rendezvous (what a plain `torchrun --nproc-per-node 2` uses, here on
/// 127.0.0.1): the agent shares its rendezvous store, on a port of its choosing.
#[test]
fn a_torchrun_launch_with_c10d_rendezvous_prints_no_error_line() {
    let endpoint = format!("127.0.0.1:{}", free_port());
    torchrun_is_quiet(&[
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        &endpoint,
        "--rdzv-id",
        "quiet",
    ]);
}

/// The local addresses of the sockets listening on `port` (IPv4 and IPv6), from
/// `/proc/net/tcp{,6}`, in the kernel's hex spelling (`0100007F` is 127.0.0.1, all
/// zeros any address).
fn listeners(port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (addr, p) = fields.get(1)?.split_once(':')?;
                    // State 0A is LISTEN.
                    (p == port && fields.get(3) == Some(&"0A")).then(|| addr.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A Slurm launch (srun's variables by hand, `MASTER_ADDR=127.0.0.1`): rank 0 serves the
/// store on 127.0.0.1 alone — checked while it waits for rank 1, before rank 1 starts —
/// and neither rank prints an error line.
#[test]
fn a_slurm_launch_serves_the_store_on_the_loopback_only_and_prints_no_error_line() {
    let cwd = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = Instant::now();
    let spawn = |rank: usize| {
        let log = cwd.path().join(format!("rank{rank}.log"));
        let child = sat_command(cwd.path())
            .env_remove("RANK")
            .env_remove("WORLD_SIZE")
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .env("SLURM_PROCID", rank.to_string())
            .env("SLURM_NTASKS", "2")
            .env("SLURM_LOCALID", rank.to_string())
            .env("SLURM_NTASKS_PER_NODE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sat-host");
        (child, log)
    };
    let (rank0, log0) = spawn(0);
    let mut procs = Procs(vec![rank0]);
    // Rank 0 waits (up to its store timeout) for rank 1 with its store listening.
    let bound = loop {
        let bound = listeners(port);
        if !bound.is_empty() {
            break bound;
        }
        assert!(
            matches!(procs.0[0].try_wait(), Ok(None)),
            "rank 0 exited before its store listened:\n{}",
            std::fs::read_to_string(&log0).unwrap_or_default()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no socket listens on {port} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        bound,
        ["0100007F"],
        "the store must listen on 127.0.0.1:{port} only (0100007F), not on every \
         interface (00000000 or an all-zero IPv6 address)"
    );
    let (rank1, log1) = spawn(1);
    procs.0.push(rank1);
    let (codes, texts) = procs.wait(start, &[log0, log1]);
    for (rank, (code, text)) in codes.iter().zip(&texts).enumerate() {
        assert_eq!(*code, Some(0), "rank {rank}:\n{text}");
        assert_eq!(
            error_lines(text),
            Vec::<&str>::new(),
            "rank {rank}:\n{text}"
        );
    }
    let m = metrics(&cwd.path().join("runs/run"));
    assert_eq!(m["status"], "completed");
    assert_eq!(m["world_size"], 2);
}

#[test]
fn error_lines_are_recognised() {
    let text = "\
[E1207 01:47:43.718966182 TCPStore.cpp:277] [c10d] The server socket on 1 has failed to bind.
[W1207 01:47:43.7 socket.cpp:767] [c10d] a warning
E1207 01:44:35.071000 690514 torch/distributed/elastic/multiprocessing/api.py:1] failed
[    0.00s ERROR] [rank 1] c10d all_reduce_sum failed
Traceback (most recent call last):
[    0.02s INFO ] [rank 0] c10d: joined rank 0 of 2 (Torchrun, store 127.0.0.1:1) (Gloo)
Epoch 1 of 1
[    0.19s INFO ] [rank 0] epoch 1/1: loss 1.8012";
    assert_eq!(
        error_lines(text),
        [
            "[E1207 01:47:43.718966182 TCPStore.cpp:277] [c10d] The server socket on 1 has failed to bind.",
            "E1207 01:44:35.071000 690514 torch/distributed/elastic/multiprocessing/api.py:1] failed",
            "[    0.00s ERROR] [rank 1] c10d all_reduce_sum failed",
            "Traceback (most recent call last):",
        ]
    );
}
