//! The run directory: resolved config, log, metrics (JSON and CSV), plots and
//! checkpoints; every file is written atomically (temporary file, then rename).
pub mod gallery;
mod metrics;
mod plot;

pub use metrics::{
    process_status_mib, resident_mib, EpochMetrics, Metrics, RobustAccuracy, RunStatus,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// `dir/.name.tmp.ext`: beside `path`, keeping its extension (tch picks the checkpoint
/// format from it).
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{ext}"))
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

    /// A file in the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `metrics.json`, `metrics.csv` (epochs), `robust_curve.csv` and, once there
    /// are robust accuracies, `robust_curve.svg`.
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
        let mut curve = String::from("attack,norm,epsilon,steps,accuracy\n");
        for r in &metrics.robust_accuracy {
            curve += &format!(
                "{},{},{},{},{}\n",
                r.attack, r.norm, r.epsilon, r.steps, r.accuracy
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
            }],
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
        assert_eq!(csv.lines().nth(1), Some("pgd,linf,0.1,3,0.25"));
        assert!(std::fs::read_dir(&a.path).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp")));
    }
}
