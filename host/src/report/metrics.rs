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
    /// Images misclassified under the attack (prediction ≠ label), including those
    /// already wrong on the clean input.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub misclassified: u64,
    /// Images the attack fooled: right on the clean input, wrong under the attack. The
    /// median norms are taken over these, as papers quote them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fooled: u64,
    /// Median ℓ2 norm of the perturbation of the fooled images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_l2: Option<f64>,
    /// Median ℓ∞ norm of the perturbation of the fooled images.
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

/// The most processes a `metrics.json` may say trained the run.
pub const MAX_WORLD_SIZE: usize = 1 << 20;

impl Metrics {
    /// Reads `metrics.json` at `path` (a regular file, at most the report cap) and checks
    /// every field ([`Metrics::check`]); an error names the file and the field.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Metrics> {
        let text = sat_input::read_text(path, sat_input::Kind::Report)?;
        let metrics: Metrics = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a sat metrics.json: {e}", path.display()))?;
        metrics
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(metrics)
    }

    /// Checks that every figure is in its range and the figures agree with each other
    /// (epochs numbered 1, 2, …; shares in [0, 1]; counts consistent); the error names
    /// the field, e.g. `epochs[2].train_accuracy = 1.5 is outside [0, 1]`.
    pub fn check(&self) -> Result<(), String> {
        share("clean_accuracy", self.clean_accuracy)?;
        if let Some(a) = self.alignment {
            within("alignment", a, f64::MIN, f64::MAX)?;
        }
        for (c, a) in self.clean_per_class.iter().enumerate() {
            share(&format!("clean_per_class[{c}]"), *a)?;
        }
        classes_agree(
            "clean_per_class",
            self.clean_per_class.len(),
            &self.class_names,
        )?;
        if !(1..=MAX_WORLD_SIZE).contains(&self.world_size) {
            return Err(format!(
                "world_size = {} is outside [1, {MAX_WORLD_SIZE}]",
                self.world_size
            ));
        }
        for (i, e) in self.epochs.iter().enumerate() {
            e.check(i).map_err(|m| format!("epochs[{i}].{m}"))?;
        }
        for (i, r) in self.robust_accuracy.iter().enumerate() {
            r.check(&self.class_names)
                .map_err(|m| format!("robust_accuracy[{i}].{m}"))?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Cross-checks the recorded epochs against the run's `[train] epochs`.
    pub fn check_epochs(&self, epochs: u32) -> Result<(), String> {
        if self.epochs.len() > epochs as usize {
            return Err(format!(
                "epochs records {} epochs, more than [train] epochs = {epochs} in the run's config",
                self.epochs.len()
            ));
        }
        Ok(())
    }
}

impl EpochMetrics {
    /// Checks the figures of the `index`-th (0-based) recorded epoch.
    fn check(&self, index: usize) -> Result<(), String> {
        if self.epoch as usize != index + 1 {
            return Err(format!(
                "epoch = {} where epoch {} was expected (epochs are recorded in order)",
                self.epoch,
                index + 1
            ));
        }
        within("train_accuracy", self.train_accuracy, 0.0, 1.0)?;
        let unbounded = f64::MAX;
        for (name, v) in [
            ("train_loss", self.train_loss),
            ("images_per_sec", self.images_per_sec),
            ("seconds", self.seconds),
            ("rss_mib", self.rss_mib),
        ] {
            within(name, v, 0.0, unbounded)?;
        }
        if let Some(s) = self.allreduce_seconds {
            within("allreduce_seconds", s, 0.0, unbounded)?;
        }
        share("data_wait_share", self.data_wait_share)?;
        match &self.data_digest {
            Some(d) if d.len() != 16 || !d.bytes().all(|b| b.is_ascii_hexdigit()) => Err(format!(
                "data_digest = {:?} is not 16 hexadecimal digits",
                shorten(d)
            )),
            _ => Ok(()),
        }
    }
}

impl RobustAccuracy {
    /// Checks one attack's figures against each other and the run's classes.
    fn check(&self, class_names: &[String]) -> Result<(), String> {
        if !matches!(self.norm.as_str(), "linf" | "l2") {
            return Err(format!(
                "norm = {:?} is neither \"linf\" nor \"l2\"",
                shorten(&self.norm)
            ));
        }
        within("epsilon", self.epsilon, 0.0, f64::MAX)?;
        within("accuracy", self.accuracy, 0.0, 1.0)?;
        for (c, a) in self.per_class.iter().enumerate() {
            share(&format!("per_class[{c}]"), *a)?;
        }
        for (c, a) in self.clean_per_class.iter().enumerate() {
            share(&format!("clean_per_class[{c}]"), *a)?;
        }
        classes_agree("per_class", self.per_class.len(), class_names)?;
        classes_agree("class_counts", self.class_counts.len(), class_names)?;
        let counted: u64 = self
            .class_counts
            .iter()
            .fold(0, |a, &n| a.saturating_add(n));
        if !self.class_counts.is_empty() && counted != self.samples {
            return Err(format!(
                "class_counts sum to {counted}, samples = {}",
                self.samples
            ));
        }
        if self.fooled > self.misclassified {
            return Err(format!(
                "fooled = {} is more than misclassified = {}",
                self.fooled, self.misclassified
            ));
        }
        if self.misclassified > self.samples {
            return Err(format!(
                "misclassified = {} is more than samples = {}",
                self.misclassified, self.samples
            ));
        }
        if self.confusion.len() > CONFUSION_LIMIT
            || self
                .confusion
                .iter()
                .any(|row| row.len() != self.confusion.len())
        {
            return Err(format!(
                "confusion is not a square matrix of at most {CONFUSION_LIMIT} classes"
            ));
        }
        if let Some(t) = self.targeted {
            within("targeted.rate", t.rate, 0.0, 1.0)?;
            if t.successes > t.evaluated {
                return Err(format!(
                    "targeted.successes = {} is more than targeted.evaluated = {}",
                    t.successes, t.evaluated
                ));
            }
        }
        for (name, m) in [
            ("median_l2", self.median_l2),
            ("median_linf", self.median_linf),
        ] {
            if let Some(m) = m {
                within(name, m, 0.0, f64::MAX)?;
            }
        }
        Ok(())
    }
}

/// `value` finite and in `[low, high]`, else an error naming `name`.
fn within(name: &str, value: f64, low: f64, high: f64) -> Result<(), String> {
    if value.is_finite() && (low..=high).contains(&value) {
        return Ok(());
    }
    let range = if low == f64::MIN {
        "a finite number".to_string()
    } else if high == f64::MAX {
        format!("a finite number ≥ {low}")
    } else {
        format!("[{low}, {high}]")
    };
    Err(format!("{name} = {value} is outside {range}"))
}

/// An optional share in `[0, 1]`.
fn share(name: &str, value: Option<f64>) -> Result<(), String> {
    value.map_or(Ok(()), |v| within(name, v, 0.0, 1.0))
}

/// A per-class list is empty or has one entry a class.
fn classes_agree(name: &str, len: usize, class_names: &[String]) -> Result<(), String> {
    if len == 0 || class_names.is_empty() || len == class_names.len() {
        Ok(())
    } else {
        Err(format!(
            "{name} has {len} entries for {} classes (class_names)",
            class_names.len()
        ))
    }
}

/// A stored string cut for a message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, RobustAccuracy, RunStatus, TargetedSuccess};

    #[test]
    fn stored_figures_out_of_range_are_refused_by_field() {
        let good = r#"{"status": "completed", "clean_accuracy": 0.5, "class_names": ["a", "b"],
            "robust_accuracy": [{"attack": "pgd", "norm": "linf", "epsilon": 0.03,
            "steps": 10, "accuracy": 0.25, "samples": 4, "class_counts": [2, 2],
            "misclassified": 3}],
            "epochs": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5,
            "images_per_sec": 10.0, "seconds": 1.0, "data_digest": "00ff00ff00ff00ff"}]}"#;
        let parse = |text: &str| serde_json::from_str::<Metrics>(text).unwrap().check();
        assert_eq!(parse(good), Ok(()));
        for (from, to, field) in [
            (
                "\"clean_accuracy\": 0.5",
                "\"clean_accuracy\": 1.5",
                "clean_accuracy = 1.5",
            ),
            ("\"epoch\": 1", "\"epoch\": 3", "epochs[0].epoch = 3"),
            (
                "\"train_loss\": 1.0",
                "\"train_loss\": -1.0",
                "epochs[0].train_loss",
            ),
            ("\"seconds\": 1.0", "\"seconds\": -2.0", "epochs[0].seconds"),
            ("00ff00ff00ff00ff", "zz", "epochs[0].data_digest"),
            (
                "\"norm\": \"linf\"",
                "\"norm\": \"l7\"",
                "robust_accuracy[0].norm",
            ),
            (
                "\"misclassified\": 3",
                "\"misclassified\": 5",
                "robust_accuracy[0].misclassified",
            ),
            (
                "[2, 2]",
                "[2, 3]",
                "robust_accuracy[0].class_counts sum to 5",
            ),
            (
                "[2, 2]",
                "[2, 1, 1]",
                "class_counts has 3 entries for 2 classes",
            ),
        ] {
            assert!(good.contains(from), "{from}");
            let e = parse(&good.replace(from, to)).unwrap_err();
            assert!(e.contains(field), "{to}: {e}");
        }
        let many = good.replace("\"status\"", "\"world_size\": 0, \"status\"");
        assert!(parse(&many).unwrap_err().contains("world_size = 0"));
    }

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
