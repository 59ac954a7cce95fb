//! `metrics.json`: the run's status, per-epoch figures and evaluation results.
use serde::{Deserialize, Serialize};

/// Where a run stands, as `metrics.json` records it (lowercase: `"running"`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Training or evaluating now (or the process died without a word: `kill -9`).
    #[default]
    Running,
    /// All epochs and the evaluation ran.
    Completed,
    /// Stopped by Ctrl-C or SIGTERM (in training or in the evaluation); the last
    /// finished epoch's checkpoint, if any, is kept.
    Interrupted,
    /// Stopped by an error or a panic, recorded in [`Metrics::error`].
    Failed,
    /// Written by `sat-host eval` for a model it did not train.
    Evaluated,
}

/// One epoch's training figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u32,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy on the (perturbed) training inputs.
    pub train_accuracy: f64,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Resident memory of the process at the end of the epoch, MiB (Linux; 0 elsewhere).
    #[serde(default)]
    pub rss_mib: f64,
    /// A digest of the epoch's data: its sample order and augmentation parameters
    /// (FNV-1a 64, hex). Two runs with one seed have the same digests whatever their
    /// training mode. Absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_digest: Option<String>,
    /// Seconds this rank (rank 0) spent in the gradient all-reduce during the epoch, in
    /// a data-parallel run; absent in one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_seconds: Option<f64>,
}

/// The process's resident set size in MiB (0 if unavailable).
pub fn resident_mib() -> f64 {
    process_status_mib("VmRSS")
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`, …) in MiB; 0 if unavailable.
pub fn process_status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Robust accuracy under one attack at one budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RobustAccuracy {
    /// Attack component.
    pub attack: String,
    /// `"linf"` or `"l2"`.
    pub norm: String,
    /// Budget.
    pub epsilon: f64,
    /// Gradient steps.
    pub steps: u32,
    /// Accuracy on the attacked test images.
    pub accuracy: f64,
}

fn one() -> usize {
    1
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Where the run stands.
    pub status: RunStatus,
    /// Clean test accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_accuracy: Option<f64>,
    /// Robust accuracies.
    pub robust_accuracy: Vec<RobustAccuracy>,
    /// Mean Etmann alignment on the test set, when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment: Option<f64>,
    /// Per-epoch figures.
    pub epochs: Vec<EpochMetrics>,
    /// The number of processes that trained the run (1 without torchrun or Slurm; the
    /// epoch figures are over all of them). Files written before it was recorded read as 1.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            status: RunStatus::default(),
            clean_accuracy: None,
            robust_accuracy: Vec::new(),
            alignment: None,
            epochs: Vec::new(),
            world_size: 1,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus;

    #[test]
    fn the_status_is_written_as_the_lowercase_word() {
        for (status, word) in [
            (RunStatus::Running, "running"),
            (RunStatus::Completed, "completed"),
            (RunStatus::Interrupted, "interrupted"),
            (RunStatus::Failed, "failed"),
            (RunStatus::Evaluated, "evaluated"),
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), status);
        }
    }
}
