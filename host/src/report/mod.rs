//! The run directory: resolved config, log, metrics (JSON and CSV), plots, TensorBoard
//! event files and checkpoints; every file but the appended log and event files is
//! written atomically (temporary file, then rename).
pub mod gallery;
mod metrics;
pub mod plot;
pub mod tensorboard;

pub use metrics::{
    process_status_mib, resident_mib, EpochMetrics, Metrics, RobustAccuracy, RunStatus,
    TargetedSuccess, CONFUSION_LIMIT,
};
pub use tensorboard::TensorBoard;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a fresh temporary file in the same directory
/// (see [`TempFile`]: created with `O_EXCL`, never through a link), synced, then renamed
/// over the target (a link planted at `path` is replaced, not followed). On any error the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.file.write_all(bytes)?;
    tmp.file.sync_all()?;
    tmp.persist(path)
}

/// A temporary file beside a target: `dir/.name.<random>.tmp.ext`, created fresh
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0644), so nothing planted under its name (a
/// symbolic link, a hard link, a file) is ever written through. Removed when dropped
/// unless [`TempFile::persist`] renamed it into place.
#[derive(Debug)]
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
    persisted: bool,
}

impl TempFile {
    /// A fresh temporary file in `path`'s directory, keeping its extension (tch picks
    /// the checkpoint format from it).
    pub fn beside(path: &Path) -> std::io::Result<Self> {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
        let ext = path
            .extension()
            .and_then(|s| s.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let mut last = None;
        for _ in 0..64 {
            let candidate = path.with_file_name(format!(".{name}.{:016x}.tmp{ext}", random_u64()));
            match create_new(&candidate) {
                Ok(file) => {
                    return Ok(Self {
                        path: candidate,
                        file,
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("64 attempts"))
    }

    /// A path that opens exactly this file whatever is renamed in its directory
    /// meanwhile (`/proc/self/fd/N` on Linux; its own path elsewhere), for writers such
    /// as tch's safetensors that take a path.
    pub fn stable_path(&self) -> PathBuf {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let proc = PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()));
            if proc.exists() {
                return proc;
            }
        }
        self.path.clone()
    }

    /// Syncs and renames the file over `target`.
    pub fn persist(mut self, target: &Path) -> std::io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.path, target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates `path`, which must not exist, without following a link there.
fn create_new(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    options.open(path)
}

/// Opens `path` for appending (creating it if absent), refusing a symbolic link there
/// (`O_NOFOLLOW`) and anything but a regular file (a FIFO or a device).
pub fn open_append_no_follow(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{} is a symbolic link; refusing to write through it",
                    path.display()
                ),
            )
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// 64 unpredictable bits (the standard library's per-process random hash keys, mixed
/// with the time and a counter); names of temporary files only.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A run directory's advisory lock (see [`RunDir::lock`]); released when dropped or
/// when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// A run's directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `<runs_dir>/<name>`, or `<name>-2`, `<name>-3`, … if taken: nothing an
    /// earlier run wrote is overwritten.
    pub fn create(runs_dir: &Path, name: &str) -> std::io::Result<Self> {
        crate::config::check_run_name(name)
            .map_err(|m| std::io::Error::new(std::io::ErrorKind::InvalidInput, m))?;
        std::fs::create_dir_all(runs_dir)?;
        for i in 1.. {
            let candidate = if i == 1 {
                runs_dir.join(name)
            } else {
                runs_dir.join(format!("{name}-{i}"))
            };
            match std::fs::create_dir(&candidate) {
                Ok(()) => return Ok(Self { path: candidate }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("an unbounded search ends with a free name")
    }

    /// Takes the run directory's advisory lock: an exclusive `File::try_lock` (flock) on
    /// `DIR/.lock` (created without following a link), held until the guard is dropped
    /// (by the commands, at the end of the process). A second process that would write
    /// the same directory gets an error naming it instead of interleaving its files.
    pub fn lock(&self) -> std::io::Result<RunLock> {
        let path = self.file(".lock");
        let file = open_append_no_follow(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                    "{} is in use by another sat-host process (it holds {}); wait for it to end",
                    self.path.display(),
                    path.display()
                ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(RunLock { _file: file })
    }

    /// Records a run abandoned by its writer: when `metrics.json` says `running` but no
    /// process holds the run's lock (the caller holds it now), the writer ended without
    /// recording an outcome (`kill -9`, out of memory, a lost node). The status becomes
    /// `failed` with `reason`; `true` if it was changed. Any other status stays.
    pub fn settle_abandoned(&self, _lock: &RunLock, reason: &str) -> anyhow::Result<bool> {
        let path = self.file("metrics.json");
        if !path.exists() {
            return Ok(false);
        }
        let mut metrics = Metrics::read(&path)?;
        if metrics.status != RunStatus::Running {
            return Ok(false);
        }
        metrics.status = RunStatus::Failed;
        metrics.error = Some(format!(
            "the process writing this run ended without recording an outcome (killed, out of memory, or its machine stopped); {reason}"
        ));
        self.write_metrics(&metrics)?;
        log::warn!(
            "{}: the run had no live writer; recorded as failed ({reason})",
            self.path.display()
        );
        Ok(true)
    }

    /// [`RunDir::settle_abandoned`] if the run's lock can be taken within `wait` (polled
    /// every 20 ms: a writer that just died releases it as the kernel closes its files);
    /// `false` when a live process holds it.
    pub fn settle_if_abandoned(
        &self,
        reason: &str,
        wait: std::time::Duration,
    ) -> anyhow::Result<bool> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.lock() {
                Ok(lock) => return self.settle_abandoned(&lock, reason),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Ok(false);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A file in the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `metrics.json`, `metrics.csv` (epochs), `robust_curve.csv` (with the
    /// median perturbation norms and the targeted success rate where recorded, else
    /// empty) and, once there are robust accuracies, `robust_curve.svg`.
    pub fn write_metrics(&self, metrics: &Metrics) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(metrics).map_err(std::io::Error::other)?;
        write_atomic(&self.file("metrics.json"), json.as_bytes())?;
        let mut csv =
            String::from("epoch,train_loss,train_accuracy,images_per_sec,seconds,rss_mib\n");
        for e in &metrics.epochs {
            csv += &format!(
                "{},{},{},{},{},{}\n",
                e.epoch, e.train_loss, e.train_accuracy, e.images_per_sec, e.seconds, e.rss_mib
            );
        }
        write_atomic(&self.file("metrics.csv"), csv.as_bytes())?;
        let mut curve = String::from(
            "attack,norm,epsilon,steps,accuracy,median_l2,median_linf,targeted_success\n",
        );
        let or_empty = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &metrics.robust_accuracy {
            curve += &format!(
                "{},{},{},{},{},{},{},{}\n",
                r.attack,
                r.norm,
                r.epsilon,
                r.steps,
                r.accuracy,
                or_empty(r.median_l2),
                or_empty(r.median_linf),
                or_empty(r.targeted.map(|t| t.rate)),
            );
        }
        write_atomic(&self.file("robust_curve.csv"), curve.as_bytes())?;
        if !metrics.robust_accuracy.is_empty() {
            let title = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let svg =
                plot::robust_curve_svg(&title, metrics.clean_accuracy, &metrics.robust_accuracy);
            write_atomic(&self.file("robust_curve.svg"), svg.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_never_collide_and_metrics_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let a = RunDir::create(root.path(), "x").unwrap();
        let b = RunDir::create(root.path(), "x").unwrap();
        assert_ne!(a.path, b.path);
        assert!(b.path.ends_with("x-2"));
        let m = Metrics {
            status: RunStatus::Completed,
            clean_accuracy: Some(0.5),
            robust_accuracy: vec![RobustAccuracy {
                attack: "pgd".into(),
                norm: "linf".into(),
                epsilon: 0.1,
                steps: 3,
                accuracy: 0.25,
                median_l2: Some(0.5),
                ..Default::default()
            }],
            class_names: vec!["cat".into(), "dog".into()],
            clean_per_class: vec![Some(1.0), None],
            alignment: None,
            epochs: vec![EpochMetrics {
                epoch: 1,
                train_loss: 1.0,
                train_accuracy: 0.4,
                images_per_sec: 10.0,
                seconds: 2.0,
                rss_mib: 100.0,
                data_digest: Some("00112233445566ff".into()),
                allreduce_seconds: Some(0.25),
                data_wait_share: Some(0.01),
                skipped_samples: None,
            }],
            world_size: 2,
            error: None,
        };
        a.write_metrics(&m).unwrap();
        let back: Metrics =
            serde_json::from_str(&std::fs::read_to_string(a.file("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(back, m);
        let csv = std::fs::read_to_string(a.file("robust_curve.csv")).unwrap();
        assert_eq!(csv.lines().nth(1), Some("pgd,linf,0.1,3,0.25,0.5,,"));
        assert!(std::fs::read_dir(&a.path).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")));
    }

    #[test]
    fn writes_never_follow_a_planted_link() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let run = RunDir::create(root.path(), "r").unwrap();
        // A link at the target is replaced, not followed.
        std::os::unix::fs::symlink(&victim, run.file("metrics.json")).unwrap();
        write_atomic(&run.file("metrics.json"), b"{}").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(run.file("metrics.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Temporary names are fresh: two temporaries of one target differ, and an
        // existing name is never opened.
        let a = TempFile::beside(&run.file("x.json")).unwrap();
        let b = TempFile::beside(&run.file("x.json")).unwrap();
        assert_ne!(a.path, b.path);
        assert!(create_new(&a.path).is_err());
        let (pa, pb) = (a.path.clone(), b.path.clone());
        drop((a, b));
        assert!(
            !pa.exists() && !pb.exists(),
            "dropped temporaries are removed"
        );
        // log.txt: appending through a link is refused.
        std::os::unix::fs::symlink(&victim, run.file("log.txt")).unwrap();
        let e = open_append_no_follow(&run.file("log.txt")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_and_the_old_file() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r").unwrap();
        write_atomic(&run.file("metrics.json"), b"old").unwrap();
        // A directory in the way makes the rename fail after the data was written.
        std::fs::create_dir(run.file("robust_curve.csv")).unwrap();
        std::fs::write(run.file("robust_curve.csv").join("x"), "").unwrap();
        assert!(write_atomic(&run.file("robust_curve.csv"), b"new").is_err());
        let names: Vec<String> = std::fs::read_dir(&run.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        assert_eq!(
            std::fs::read_to_string(run.file("metrics.json")).unwrap(),
            "old"
        );
    }

    #[test]
    fn a_run_directory_has_one_writer_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r").unwrap();
        let held = run.lock().unwrap();
        // flock locks belong to open file descriptions: a second open conflicts, as a
        // second process would.
        let e = run.lock().unwrap_err();
        assert!(
            e.to_string().contains("in use by another sat-host process"),
            "{e}"
        );
        drop(held);
        run.lock().unwrap();
    }

    #[test]
    fn a_running_run_without_a_live_writer_is_recorded_as_failed() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "r").unwrap();
        run.write_metrics(&Metrics::default()).unwrap();
        let status = || Metrics::read(&run.file("metrics.json")).unwrap();
        // A live writer holds the lock: nothing changes, even after waiting.
        let held = run.lock().unwrap();
        let wait = std::time::Duration::from_millis(60);
        assert!(!run.settle_if_abandoned("found by a test", wait).unwrap());
        assert_eq!(status().status, RunStatus::Running);
        // Gone (lock free): failed, with the reason.
        drop(held);
        assert!(run.settle_if_abandoned("found by a test", wait).unwrap());
        let m = status();
        assert_eq!(m.status, RunStatus::Failed);
        let error = m.error.unwrap();
        assert!(
            error.contains("without recording an outcome") && error.ends_with("found by a test"),
            "{error}"
        );
        // A finished status stays.
        assert!(!run.settle_if_abandoned("again", wait).unwrap());
        let done = Metrics {
            status: RunStatus::Completed,
            ..Metrics::default()
        };
        run.write_metrics(&done).unwrap();
        assert!(!run.settle_if_abandoned("again", wait).unwrap());
        assert_eq!(status().status, RunStatus::Completed);
    }

    #[test]
    fn run_names_are_one_plain_component() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["../x", "/abs", "", ".", "..", "a\nb", "a/b"] {
            assert!(RunDir::create(root.path(), bad).is_err(), "{bad:?}");
        }
        assert!(RunDir::create(root.path(), "ok-1_2.3").is_ok());
    }
}
