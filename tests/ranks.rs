//! Data-parallel test processes: ranks of the real binary started with torchrun's
//! variables on 127.0.0.1, waited for within a deadline and killed when a test fails,
//! and the checkpoints they write compared tensor by tensor.
use crate::sat_host;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on the loopback address (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Processes killed (and reaped) when dropped: a failing test leaves none behind.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a finished process said.
pub struct Done {
    pub code: Option<i32>,
    pub stderr: String,
    pub seconds: f64,
}

impl Procs {
    /// Waits for every process, killing all of them after `deadline`; stderr read from
    /// the files given at spawn.
    pub fn wait(mut self, deadline: Duration, logs: &[PathBuf]) -> Vec<Done> {
        let start = Instant::now();
        let mut codes: Vec<Option<Option<i32>>> = vec![None; self.0.len()];
        let mut times = vec![0.0; self.0.len()];
        while codes.iter().any(Option::is_none) {
            for (i, c) in self.0.iter_mut().enumerate() {
                if codes[i].is_none() {
                    if let Some(status) = c.try_wait().unwrap() {
                        codes[i] = Some(status.code());
                        times[i] = start.elapsed().as_secs_f64();
                    }
                }
            }
            if start.elapsed() > deadline {
                let logs: Vec<String> = logs
                    .iter()
                    .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                    .collect();
                panic!(
                    "processes still running after {deadline:?}; killed\n{}",
                    logs.join("\n----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0.clear();
        codes
            .into_iter()
            .zip(times)
            .zip(logs)
            .map(|((code, seconds), log)| Done {
                code: code.unwrap(),
                stderr: std::fs::read_to_string(log).unwrap_or_default(),
                seconds,
            })
            .collect()
    }
}

/// Starts `world` ranks of `sat-host args…` (plus `per_rank(rank)` arguments) with the
/// torchrun variables set by hand; stderr of rank r goes to `cwd/rank<r>.log`.
pub fn spawn_ranks(
    cwd: &Path,
    world: usize,
    port: u16,
    args: &[&str],
    per_rank: impl Fn(usize) -> Vec<String>,
) -> (Procs, Vec<PathBuf>) {
    spawn_ranks_with(cwd, world, port, args, per_rank, &[])
}

/// As [`spawn_ranks`], with `env` set in every rank (e.g. `SAT_LOG=debug`).
pub fn spawn_ranks_with(
    cwd: &Path,
    world: usize,
    port: u16,
    args: &[&str],
    per_rank: impl Fn(usize) -> Vec<String>,
    env: &[(&str, &str)],
) -> (Procs, Vec<PathBuf>) {
    let mut procs = Procs(Vec::new());
    let mut logs = Vec::new();
    for rank in 0..world {
        let log = cwd.join(format!("rank{rank}.log"));
        let mut command = Command::new(sat_host());
        command
            .env_remove("SAT_PLUGIN_PATH")
            .env_remove("SAT_LOG")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .args(args)
            .args(per_rank(rank))
            .current_dir(cwd)
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
    (procs, logs)
}

/// Runs `world` ranks to the end within `deadline`.
pub fn run_ranks(cwd: &Path, world: usize, args: &[&str], deadline: u64) -> Vec<Done> {
    let (procs, logs) = spawn_ranks(cwd, world, free_port(), args, |_| Vec::new());
    procs.wait(Duration::from_secs(deadline), &logs)
}

/// The float32 tensors of a safetensors file (header: 8-byte length, JSON), by name.
pub fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
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
            let offsets = &v["data_offsets"];
            let (a, b) = (
                offsets[0].as_u64().unwrap() as usize,
                offsets[1].as_u64().unwrap() as usize,
            );
            let values = data[a..b]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k.clone(), values)
        })
        .collect()
}

/// The largest absolute difference between the float32 tensors of two safetensors
/// files whose names contain `filter` (`""`: all), and that tensor's name; both files
/// must hold the same tensors, at least one compared, all finite.
pub fn worst_difference(a: &Path, b: &Path, filter: &str) -> (f32, String) {
    let (a, b) = (tensors(a), tensors(b));
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

/// The largest absolute difference between two safetensors files' float32 tensors.
pub fn max_difference(a: &Path, b: &Path) -> f32 {
    worst_difference(a, b, "").0
}
