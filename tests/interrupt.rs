//! Issue 22, point 3, end to end: SIGTERM stops every phase within seconds — inside an
//! attack's loop (APGD, FAB, Square, CW, each given minutes of work), while the data
//! loads — with status `interrupted` and exit 143; a second SIGTERM ends the process at
//! once without leaving the status `running`. And the leftovers of point 6: a failed or
//! interrupted `eval --out DIR` can run again, a refused `--resume` keeps `config.toml`.
use sat_tests::{metrics, sat, spawn_sat, tiny_run, TINY};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped process may take to end: the stop itself takes well under a
/// second; the rest is slack for a loaded machine.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// A child process killed (and reaped) if the test ends before it does.
struct Running(Option<Child>);

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits at most `limit` for the process to end; fails the test (killing it) if it
    /// does not. Returns its status and how long it took.
    fn wait_within(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let child = self.0.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for sat-host") {
                self.0 = None;
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "sat-host did not stop within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `sat-host args…` in the background in `cwd`, stderr to `cwd/stderr.txt`.
fn start(cwd: &Path, args: &[&str]) -> Running {
    let err = std::fs::File::create(cwd.join("stderr.txt")).unwrap();
    Running(Some(spawn_sat(cwd, args, Stdio::from(err))))
}

/// `run` with [`TINY`] and `extra`.
fn start_run(cwd: &Path, extra: &[&str]) -> Running {
    let mut args = vec!["run"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    start(cwd, &args)
}

/// Waits until the file at `path` contains `needle`, failing after `seconds` (or at
/// once if the process ended first).
fn wait_for_text(path: &Path, needle: &str, seconds: u64, process: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        let ended = process.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            ended.is_none(),
            "sat-host ended ({ended:?}) before saying {needle:?}:\n{text}"
        );
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPU time the process has used, in clock ticks (`/proc/PID/stat`: utime + stime).
fn cpu_ticks(process: &Running) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.id())).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Waits until the process has worked `ticks` more clock ticks of CPU time (it is busy
/// in the phase it just announced, not between phases), failing after `seconds`.
fn wait_for_work(process: &mut Running, ticks: u64, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = cpu_ticks(process);
    while cpu_ticks(process) < start + ticks {
        let ended = process.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            ended.is_none(),
            "sat-host ended ({ended:?}) while it should work"
        );
        assert!(
            Instant::now() < deadline,
            "sat-host did no work for {seconds} s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(process: &Running) {
    let ok = Command::new("kill")
        .args(["-TERM", &process.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Trains the tiny run `name` for one epoch, then evaluates it with `attack` set up
/// (`settings`, as `--set` values) to run for minutes (on 2 cores of dev-2c, 32 test
/// images, extrapolated from short runs: APGD-CE 5000 steps ~13 min, FAB 10 000 steps ×
/// 5 restarts ~17 min, Square 10⁶ queries ~18 min, CW-L2 20 × 10 000 steps ~12 min);
/// SIGTERM once that attack is at work must stop the run within seconds, status
/// `interrupted`, exit 143, the stop noticed inside the attack (its next model call
/// refused).
fn sigterm_stops_a_long_attack(attack: &str, settings: &[&str]) {
    let cwd = tempfile::tempdir().unwrap();
    let attacks = format!("eval.attacks=[\"{attack}\"]");
    let mut extra = vec![
        "--set",
        "name=r",
        "--set",
        &attacks,
        "--set",
        "eval.alignment=false",
    ];
    for s in settings {
        extra.extend(["--set", s]);
    }
    let mut run = start_run(cwd.path(), &extra);
    let dir = cwd.path().join("runs/r");
    wait_for_text(
        &dir.join("log.txt"),
        &format!("evaluating {attack} at eps"),
        120,
        &mut run,
    );
    wait_for_work(&mut run, 30, 60);
    sigterm(&run);
    let (status, took) = run.wait_within(STOP_WITHIN);
    let stderr = text(&cwd.path().join("stderr.txt"));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert_eq!(metrics(&dir)["status"], "interrupted", "{stderr}");
    assert!(
        stderr.contains("the host is stopping (SIGTERM): no more model calls"),
        "{stderr}"
    );
    assert!(
        stderr.contains("evaluation interrupted by SIGTERM"),
        "{stderr}"
    );
    eprintln!("{attack}: stopped {took:?} after SIGTERM");
}

#[test]
fn sigterm_stops_apgd_inside_its_loop() {
    sigterm_stops_a_long_attack("apgd-ce", &["eval.components.apgd-ce.steps=5000"]);
}

#[test]
fn sigterm_stops_fab_inside_its_loop() {
    sigterm_stops_a_long_attack(
        "fab",
        &[
            "eval.components.fab.steps=10000",
            "eval.components.fab.restarts=5",
        ],
    );
}

#[test]
fn sigterm_stops_square_inside_its_loop() {
    sigterm_stops_a_long_attack("square", &["eval.components.square.queries=1000000"]);
}

#[test]
fn sigterm_stops_cw_inside_its_loop() {
    sigterm_stops_a_long_attack(
        "cw-l2",
        &[
            "eval.components.cw-l2.steps=10000",
            "eval.components.cw-l2.binary_search_steps=20",
        ],
    );
}

#[test]
fn sigterm_stops_the_data_loading() {
    let cwd = tempfile::tempdir().unwrap();
    // 10 000 generated images of 256 px: tens of seconds of work.
    let mut run = start_run(
        cwd.path(),
        &[
            "--set",
            "name=d",
            "--set",
            "data.train_size=10000",
            "--set",
            "data.image_size=256",
        ],
    );
    let dir = cwd.path().join("runs/d");
    wait_for_text(&dir.join("log.txt"), "run directory", 60, &mut run);
    wait_for_work(&mut run, 10, 60);
    sigterm(&run);
    let (status, took) = run.wait_within(STOP_WITHIN);
    let stderr = text(&cwd.path().join("stderr.txt"));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("interrupted while loading dataset `shapes`"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("training:"),
        "stopped before training: {stderr}"
    );
    assert_eq!(metrics(&dir)["status"], "interrupted");
    eprintln!("data loading: stopped {took:?} after SIGTERM");
}

#[test]
fn a_second_sigterm_ends_the_process_at_once_and_records_the_interruption() {
    let cwd = tempfile::tempdir().unwrap();
    // Steps of several seconds (128 images of 256 px a batch) that no model call of a
    // plugin interrupts (clean training): the first SIGTERM waits for the step's end.
    let mut run = start_run(
        cwd.path(),
        &[
            "--set",
            "name=s",
            "--set",
            "data.train_size=512",
            "--set",
            "data.image_size=256",
            "--set",
            "train.batch_size=128",
            "--set",
            "model.width=16",
        ],
    );
    let dir = cwd.path().join("runs/s");
    let log = dir.join("log.txt");
    wait_for_text(&log, "training:", 60, &mut run);
    wait_for_work(&mut run, 10, 60);
    sigterm(&run);
    wait_for_text(&log, "send it again to stop at once", 10, &mut run);
    sigterm(&run);
    let (status, took) = run.wait_within(STOP_WITHIN);
    let stderr = text(&cwd.path().join("stderr.txt"));
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("SIGTERM again: stopping now"), "{stderr}");
    // Epoch 1 had not finished: no metrics.json until the second signal wrote one.
    assert_eq!(metrics(&dir)["status"], "interrupted", "{stderr}");
    assert!(!dir.join("state.safetensors").exists());
    eprintln!("second SIGTERM: ended {took:?} after it");
}

#[test]
fn a_failed_or_interrupted_eval_out_leaves_nothing_and_runs_again() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(
        cwd.path(),
        &[
            "--set",
            "name=a",
            "--set",
            "eval.attacks=[]",
            "--set",
            "eval.alignment=false",
        ],
        &[],
    )
    .success();
    // A failure after the directory was made and locked (weights of another width).
    sat(
        cwd.path(),
        &[
            "eval",
            "--run",
            "runs/a",
            "--out",
            "out/fresh",
            "--set",
            "model.width=8",
        ],
        &[],
    )
    .fails_with(&["another [model] arch or width"]);
    assert!(
        !cwd.path().join("out").exists(),
        "the directories made were removed"
    );
    // Interrupted: the same.
    let mut eval = start(
        cwd.path(),
        &[
            "eval",
            "--run",
            "runs/a",
            "--out",
            "out/fresh",
            "--attack",
            "apgd-ce",
            "--set",
            "eval.components.apgd-ce.steps=5000",
        ],
    );
    wait_for_text(
        &cwd.path().join("stderr.txt"),
        "evaluating apgd-ce at eps",
        60,
        &mut eval,
    );
    wait_for_work(&mut eval, 30, 60);
    sigterm(&eval);
    let (status, _) = eval.wait_within(STOP_WITHIN);
    assert_eq!(
        status.code(),
        Some(143),
        "{}",
        text(&cwd.path().join("stderr.txt"))
    );
    assert!(!cwd.path().join("out").exists());
    // A lock file left behind by a process killed outright does not refuse the command.
    std::fs::create_dir_all(cwd.path().join("out/fresh")).unwrap();
    std::fs::write(cwd.path().join("out/fresh/.lock"), "").unwrap();
    sat(
        cwd.path(),
        &["eval", "--run", "runs/a", "--out", "out/fresh"],
        &[],
    )
    .success();
    assert!(cwd.path().join("out/fresh/metrics.json").exists());
    // `--out` naming a file says so, with its path.
    std::fs::write(cwd.path().join("file"), "").unwrap();
    sat(
        cwd.path(),
        &["eval", "--run", "runs/a", "--out", "file"],
        &[],
    )
    .fails_with(&["--out file: it exists and is not a directory"]);
}

#[test]
fn a_refused_resume_keeps_the_config() {
    let cwd = tempfile::tempdir().unwrap();
    tiny_run(
        cwd.path(),
        &[
            "--set",
            "name=c",
            "--set",
            "eval.attacks=[]",
            "--set",
            "eval.alignment=false",
        ],
        &[],
    )
    .success();
    let config = cwd.path().join("runs/c/config.toml");
    let before = std::fs::read(&config).unwrap();
    let metrics = cwd.path().join("runs/c/metrics.json");
    let recorded = std::fs::read(&metrics).unwrap();
    // Another model width: the state file does not fit, the resume is refused.
    sat(
        cwd.path(),
        &["run", "--resume", "runs/c", "--set", "model.width=8"],
        &[],
    )
    .fails_with(&["resuming runs/c is refused", "shape"]);
    assert_eq!(
        std::fs::read(&config).unwrap(),
        before,
        "config.toml unchanged"
    );
    assert!(
        std::fs::read(&metrics).unwrap() == recorded,
        "metrics.json unchanged (no `failed` for a refusal)"
    );
    // An accepted one records its extension.
    sat(
        cwd.path(),
        &["run", "--resume", "runs/c", "--set", "train.epochs=2"],
        &[],
    )
    .success();
    assert!(text(&config).contains("epochs = 2"), "{}", text(&config));
}

/// A data-parallel run: SIGTERM to rank 0 alone, in the middle of a long epoch, stops
/// both ranks within seconds — they agree on the stop before every batch, so neither is
/// left waiting in a collective — and the run is recorded `interrupted`.
#[test]
fn sigterm_stops_a_data_parallel_run_at_the_next_batch() {
    use sat_tests::ranks::{free_port, spawn_ranks, Procs};
    let cwd = tempfile::tempdir().unwrap();
    let mut args = vec!["run"];
    args.extend_from_slice(TINY);
    // Epochs of minutes: PGD-50 training on 4096 images.
    args.extend([
        "--set", "name=ddp", "--attack", "pgd", "--set", "components.pgd.steps=50",
        "--set", "data.train_size=4096", "--set", "distributed.timeout_seconds=60",
    ]);
    let (mut procs, logs) = spawn_ranks(cwd.path(), 2, free_port(), &args, |_| Vec::new());
    let start = Instant::now();
    while !text(&logs[0]).contains("training:") {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", text(&logs[0]));
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0 = procs.0[0].id().to_string();
    assert!(Command::new("kill").args(["-TERM", &rank0]).status().unwrap().success());
    let signalled = Instant::now();
    let children = std::mem::take(&mut procs.0);
    let done = Procs(children).wait(Duration::from_secs(60), &logs);
    let seconds = signalled.elapsed();
    assert!(seconds < STOP_WITHIN, "the ranks took {seconds:?} to stop");
    assert_eq!(done[0].code, Some(143), "{}", done[0].stderr);
    assert_eq!(done[1].code, Some(130), "{}", done[1].stderr);
    assert!(done[0].stderr.contains("interrupted in epoch 1 after"), "{}", done[0].stderr);
    assert_eq!(metrics(&cwd.path().join("runs/ddp"))["status"], "interrupted");
}
