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
    /// The share of the epoch's time the training step waited for its next batch
    /// (this rank; rank 0 in a data-parallel run). Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_wait_share: Option<f64>,
    /// Samples left out as unreadable during the epoch (`[data] on_corrupt = "skip"`,
    /// this rank). Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_samples: Option<u64>,
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

/// The most classes for which `metrics.json` records confusion matrices (`K²` counts
/// each); the per-class figures are recorded for any number.
pub const CONFUSION_LIMIT: usize = 100;

/// Robust accuracy under one attack at one budget, with its breakdown. Every field after
/// `accuracy` is absent from files written before it was recorded (and reads as empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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
    /// The test images attacked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub samples: u64,
    /// The attacked images of each class (indexed as [`Metrics::class_names`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_counts: Vec<u64>,
    /// Robust accuracy on each class (`null` for a class without images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<Option<f64>>,
    /// Clean accuracy on each class, on the same images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clean_per_class: Vec<Option<f64>>,
    /// Under the attack, `confusion[true class][predicted class]` image counts (up to
    /// [`CONFUSION_LIMIT`] classes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub confusion: Vec<Vec<u64>>,
    /// How often a targeted attack reached its targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeted: Option<TargetedSuccess>,
    /// Images misclassified under the attack (prediction ≠ label): the successful
    /// adversarial examples the median norms are taken over.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub misclassified: u64,
    /// Median ℓ2 norm of the perturbation of the misclassified images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_l2: Option<f64>,
    /// Median ℓ∞ norm of the perturbation of the misclassified images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_linf: Option<f64>,
}

impl RobustAccuracy {
    /// The class with the lowest robust accuracy and that accuracy (the first of equals);
    /// `None` without per-class figures.
    pub fn worst_class(&self) -> Option<(usize, f64)> {
        self.per_class
            .iter()
            .enumerate()
            .filter_map(|(c, a)| a.map(|a| (c, a)))
            .fold(None, |worst, (c, a)| match worst {
                Some((_, w)) if w <= a => worst,
                _ => Some((c, a)),
            })
    }
}

/// The success of a targeted attack: the share of images predicted as their target,
/// among those whose label is not their target.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct TargetedSuccess {
    /// `successes / evaluated` (0 when nothing was evaluated).
    pub rate: f64,
    /// Images predicted as their target.
    pub successes: u64,
    /// Images whose label is not their target.
    pub evaluated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// The test set's class names, indexing the per-class figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Clean accuracy on each class of the whole test set (`null` for a class without
    /// images).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clean_per_class: Vec<Option<f64>>,
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
            class_names: Vec::new(),
            clean_per_class: Vec::new(),
            alignment: None,
            epochs: Vec::new(),
            world_size: 1,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, RobustAccuracy, RunStatus, TargetedSuccess};

    #[test]
    fn metrics_written_before_the_breakdown_still_parse() {
        let old = r#"{"status": "completed", "clean_accuracy": 0.5,
            "robust_accuracy": [{"attack": "pgd", "norm": "linf", "epsilon": 0.03,
            "steps": 10, "accuracy": 0.25}], "epochs": []}"#;
        let m: Metrics = serde_json::from_str(old).unwrap();
        let r = &m.robust_accuracy[0];
        assert_eq!(r.accuracy, 0.25);
        assert!(r.per_class.is_empty() && r.confusion.is_empty() && r.targeted.is_none());
        assert_eq!(r.worst_class(), None);
        assert!(m.class_names.is_empty());
        // And the breakdown survives a round trip, absent classes as null.
        let full = RobustAccuracy {
            per_class: vec![Some(0.5), None, Some(0.25), Some(0.25)],
            confusion: vec![vec![1, 1], vec![0, 2]],
            targeted: Some(TargetedSuccess {
                rate: 0.5,
                successes: 1,
                evaluated: 2,
            }),
            median_l2: Some(0.1),
            ..r.clone()
        };
        let json = serde_json::to_string(&full).unwrap();
        assert!(json.contains("[0.5,null,0.25,0.25]"), "{json}");
        assert_eq!(serde_json::from_str::<RobustAccuracy>(&json).unwrap(), full);
        assert_eq!(full.worst_class(), Some((2, 0.25)), "the first of equals");
    }

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
