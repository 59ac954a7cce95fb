//! What an evaluation counts, batch by batch: the confusion matrix (true × predicted),
//! clean correctness per class, hits of a targeted attack, and the perturbation norms of
//! the successful adversarial examples; then summed (and the norms gathered) over the
//! ranks, so that every figure is that of one process.
use crate::distributed::Ranks;
use tch::{Device, Kind, Tensor};

/// The hits of a targeted attack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetCounts {
    /// Images whose label differs from their target (the others cannot succeed).
    pub evaluated: i64,
    /// Those predicted as their target.
    pub hits: i64,
}

/// The counts of one evaluation (one attack at one budget, or the clean images).
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    /// The number of classes `K`.
    pub classes: usize,
    /// `confusion[t·K + p]`: images of class `t` predicted as `p` (under the attack, if
    /// there is one).
    pub confusion: Vec<i64>,
    /// Per class, the images predicted right without the attack (attacked tallies only).
    pub clean_correct: Option<Vec<i64>>,
    /// The hits of a targeted attack.
    pub targeted: Option<TargetCounts>,
    /// `(‖δ‖₂, ‖δ‖∞)` of every image the attack left misclassified (attacked tallies
    /// only), `δ` being the attacked minus the clean image.
    pub norms: Vec<(f64, f64)>,
}

/// The `[N]` int64 values of `t` on the CPU.
fn to_cpu(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).to_kind(Kind::Int64)
}

/// `Vec<i64>` of an int64 tensor.
fn to_vec(t: &Tensor) -> anyhow::Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(&to_cpu(t).contiguous())?)
}

impl Tally {
    /// An empty tally over `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            confusion: vec![0; classes * classes],
            clean_correct: None,
            targeted: None,
            norms: Vec::new(),
        }
    }

    /// Counts a batch's `predicted` classes against its `labels` (both `[N]`).
    pub fn add_predictions(&mut self, labels: &Tensor, predicted: &Tensor) -> anyhow::Result<()> {
        let k = self.classes as i64;
        let index = to_cpu(labels) * k + to_cpu(predicted);
        let counts = to_vec(&index.f_bincount(None::<Tensor>, k * k)?)?;
        anyhow::ensure!(
            counts.len() == self.confusion.len(),
            "a label or prediction is outside the {k} classes"
        );
        for (c, n) in self.confusion.iter_mut().zip(counts) {
            *c += n;
        }
        Ok(())
    }

    /// Counts the batch's clean predictions that are right, per class.
    pub fn add_clean(&mut self, labels: &Tensor, clean_predicted: &Tensor) -> anyhow::Result<()> {
        let (labels, k) = (to_cpu(labels), self.classes as i64);
        let right = labels.masked_select(&labels.eq_tensor(&to_cpu(clean_predicted)));
        let counts = to_vec(&right.f_bincount(None::<Tensor>, k)?)?;
        let total = self
            .clean_correct
            .get_or_insert_with(|| vec![0; k as usize]);
        anyhow::ensure!(
            counts.len() == total.len(),
            "a label is outside the {k} classes"
        );
        for (c, n) in total.iter_mut().zip(counts) {
            *c += n;
        }
        Ok(())
    }

    /// Counts the hits of a targeted attack: images whose label is not their target, and
    /// among them those predicted as the target.
    pub fn add_targets(
        &mut self,
        labels: &Tensor,
        predicted: &Tensor,
        targets: &Tensor,
    ) -> anyhow::Result<()> {
        let targets = to_cpu(targets);
        let eligible = to_cpu(labels).ne_tensor(&targets);
        let hit = to_cpu(predicted).eq_tensor(&targets).logical_and(&eligible);
        let counts = self.targeted.get_or_insert_with(TargetCounts::default);
        counts.evaluated += eligible.sum(Kind::Int64).int64_value(&[]);
        counts.hits += hit.sum(Kind::Int64).int64_value(&[]);
        Ok(())
    }

    /// Records `(‖δ‖₂, ‖δ‖∞)`, `δ = adversarial − clean`, of the images the attack
    /// fooled: right on the clean input (`clean_predicted`), wrong on the adversarial one
    /// (`predicted`). An image already wrong before the attack has no perturbation to
    /// measure (its norm would be 0 and drag the median down); papers quote the median
    /// over the fooled images.
    pub fn add_norms(
        &mut self,
        (clean, adversarial): (&Tensor, &Tensor),
        labels: &Tensor,
        predicted: &Tensor,
        clean_predicted: &Tensor,
    ) -> anyhow::Result<()> {
        let labels = to_cpu(labels);
        let wrong = to_cpu(predicted)
            .ne_tensor(&labels)
            .logical_and(&to_cpu(clean_predicted).eq_tensor(&labels));
        let rows = wrong.nonzero().squeeze_dim(1);
        let fooled = rows.size()[0];
        if fooled == 0 {
            return Ok(());
        }
        // Only the fooled rows are converted and measured: a row's norms do not depend on
        // the other rows (libtorch reduces each row alone when there are several), so they
        // are those of the whole batch. A single row is measured within its batch, as
        // libtorch may split a lone row's reduction over threads.
        let (adversarial, clean, keep) = if fooled >= 2 {
            let on = |t: &Tensor| t.index_select(0, &rows.to_device(t.device()));
            (on(adversarial), on(clean), None)
        } else {
            (
                adversarial.shallow_clone(),
                clean.shallow_clone(),
                Some(&wrong),
            )
        };
        let delta =
            (adversarial.to_kind(Kind::Double) - clean.to_kind(Kind::Double)).flatten(1, -1);
        let l2 = delta
            .norm_scalaropt_dim(2, [1i64].as_slice(), false)
            .to_device(Device::Cpu);
        let linf = delta
            .abs()
            .amax([1i64].as_slice(), false)
            .to_device(Device::Cpu);
        let (l2, linf) = match keep {
            Some(mask) => (l2.masked_select(mask), linf.masked_select(mask)),
            None => (l2, linf),
        };
        let l2 = Vec::<f64>::try_from(&l2)?;
        let linf = Vec::<f64>::try_from(&linf)?;
        self.norms.extend(l2.into_iter().zip(linf));
        Ok(())
    }

    /// This rank's tally summed over all ranks (the norms gathered from every rank).
    pub fn reduce(mut self, ranks: &Ranks, device: Device) -> anyhow::Result<Self> {
        if !ranks.is_distributed() {
            return Ok(self);
        }
        // One sum of the same length on every rank, whatever its share: a rank without
        // batches (or without a targeted attack's hits) sends zeros and a 0 presence flag.
        let k = self.classes;
        let clean = self.clean_correct.clone().unwrap_or_else(|| vec![0; k]);
        let targeted = self.targeted.unwrap_or_default();
        let mut counts: Vec<f64> = self.confusion.iter().map(|&c| c as f64).collect();
        counts.extend(clean.iter().map(|&c| c as f64));
        counts.extend([
            targeted.evaluated as f64,
            targeted.hits as f64,
            f64::from(u8::from(self.clean_correct.is_some())),
            f64::from(u8::from(self.targeted.is_some())),
        ]);
        let summed = ranks.sum(&counts, device)?;
        let (confusion, rest) = summed.split_at(k * k);
        let (clean, rest) = rest.split_at(k);
        self.confusion = confusion.iter().map(|&c| c as i64).collect();
        self.clean_correct = (rest[2] > 0.0).then(|| clean.iter().map(|&c| c as i64).collect());
        self.targeted = (rest[3] > 0.0).then(|| TargetCounts {
            evaluated: rest[0] as i64,
            hits: rest[1] as i64,
        });
        let flat: Vec<f64> = self.norms.iter().flat_map(|&(a, b)| [a, b]).collect();
        let all = ranks.gather(&flat, device)?;
        self.norms = all.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Ok(self)
    }

    /// Images counted.
    pub fn total(&self) -> i64 {
        self.confusion.iter().sum()
    }

    /// Images of each class.
    pub fn class_counts(&self) -> Vec<i64> {
        self.confusion
            .chunks_exact(self.classes.max(1))
            .map(|row| row.iter().sum())
            .collect()
    }

    /// Images predicted right (the diagonal).
    pub fn correct_per_class(&self) -> Vec<i64> {
        (0..self.classes)
            .map(|c| self.confusion[c * self.classes + c])
            .collect()
    }

    /// The accuracy over all images (0 when there are none).
    pub fn accuracy(&self) -> f64 {
        let correct: i64 = self.correct_per_class().iter().sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// The accuracy on each class; `None` for a class without images.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        ratios(&self.correct_per_class(), &self.class_counts())
    }

    /// The clean accuracy on each class of the attacked images (attacked tallies only).
    pub fn clean_per_class(&self) -> Option<Vec<Option<f64>>> {
        let correct = self.clean_correct.as_ref()?;
        Some(ratios(correct, &self.class_counts()))
    }

    /// The confusion matrix as rows (true class) of counts per predicted class.
    pub fn confusion_rows(&self) -> Vec<Vec<u64>> {
        self.confusion
            .chunks_exact(self.classes.max(1))
            .map(|row| row.iter().map(|&c| c.max(0) as u64).collect())
            .collect()
    }

    /// The median `‖δ‖₂` and `‖δ‖∞` of the successful adversarial examples.
    pub fn median_norms(&self) -> (Option<f64>, Option<f64>) {
        let (l2, linf): (Vec<f64>, Vec<f64>) = self.norms.iter().copied().unzip();
        (median(l2), median(linf))
    }
}

/// `correct[c] / count[c]` per class, `None` where the count is 0.
fn ratios(correct: &[i64], count: &[i64]) -> Vec<Option<f64>> {
    correct
        .iter()
        .zip(count)
        .map(|(&c, &n)| (n > 0).then(|| c as f64 / n as f64))
        .collect()
}

/// The median of `values` (the mean of the two middle ones for an even count); `None`
/// when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn the_confusion_matrix_and_per_class_figures_are_the_hand_counts() {
        // 3 classes; labels 0 0 0 1 1 2, predictions 0 1 0 1 2 1.
        let mut t = Tally::new(3);
        t.add_predictions(&ints(&[0, 0, 0]), &ints(&[0, 1, 0]))
            .unwrap();
        t.add_predictions(&ints(&[1, 1, 2]), &ints(&[1, 2, 1]))
            .unwrap();
        assert_eq!(t.confusion, vec![2, 1, 0, 0, 1, 1, 0, 1, 0]);
        assert_eq!(
            t.confusion_rows(),
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 1, 0]]
        );
        assert_eq!(t.total(), 6);
        assert_eq!(t.class_counts(), vec![3, 2, 1]);
        assert_eq!(t.per_class(), vec![Some(2.0 / 3.0), Some(0.5), Some(0.0)]);
        assert!((t.accuracy() - 0.5).abs() < 1e-12);
        // The accuracy is the count-weighted mean of the per-class accuracies.
        let weighted: f64 = t
            .per_class()
            .iter()
            .zip(t.class_counts())
            .map(|(a, n)| a.unwrap() * n as f64)
            .sum::<f64>()
            / 6.0;
        assert!((weighted - t.accuracy()).abs() < 1e-12);
        assert!(t.clean_per_class().is_none());
        // Clean: right on 0 0 _ 1 _ 2.
        t.add_clean(&ints(&[0, 0, 0, 1, 1, 2]), &ints(&[0, 0, 2, 1, 0, 2]))
            .unwrap();
        assert_eq!(
            t.clean_per_class().unwrap(),
            vec![Some(2.0 / 3.0), Some(0.5), Some(1.0)]
        );
    }

    #[test]
    fn a_class_without_images_has_no_accuracy_and_out_of_range_labels_fail() {
        let mut t = Tally::new(3);
        t.add_predictions(&ints(&[0, 2]), &ints(&[0, 0])).unwrap();
        assert_eq!(t.per_class(), vec![Some(1.0), None, Some(0.0)]);
        assert!(t.add_predictions(&ints(&[3]), &ints(&[0])).is_err());
    }

    #[test]
    fn targeted_hits_skip_images_whose_label_is_the_target() {
        let mut t = Tally::new(3);
        // Labels 0 1 2 2, targets 1 1 0 0, predicted 1 1 0 2: image 1 is the target
        // already (skipped); of the other 3, images 0 and 2 hit.
        t.add_targets(
            &ints(&[0, 1, 2, 2]),
            &ints(&[1, 1, 0, 2]),
            &ints(&[1, 1, 0, 0]),
        )
        .unwrap();
        assert_eq!(
            t.targeted,
            Some(TargetCounts {
                evaluated: 3,
                hits: 2
            })
        );
    }

    #[test]
    fn norms_are_kept_for_fooled_images_only_and_their_median_is_exact() {
        let clean = Tensor::zeros([3, 1, 2, 2], (Kind::Float, Device::Cpu));
        let adversarial = Tensor::from_slice(&[
            0.3f32, 0.4, 0.0, 0.0, // ‖·‖₂ 0.5, ‖·‖∞ 0.4
            0.1, 0.1, 0.1, 0.1, // right: not counted
            0.0, 0.0, 0.0, 1.0, // ‖·‖₂ 1, ‖·‖∞ 1
        ])
        .reshape([3, 1, 2, 2]);
        let mut t = Tally::new(2);
        let (labels, predicted) = (ints(&[0, 0, 1]), ints(&[1, 0, 0]));
        t.add_norms((&clean, &adversarial), &labels, &predicted, &labels)
            .unwrap();
        assert_eq!(t.norms.len(), 2);
        // An image already wrong before the attack is not one it fooled.
        let mut u = Tally::new(2);
        u.add_norms(
            (&clean, &adversarial),
            &labels,
            &predicted,
            &ints(&[0, 0, 0]),
        )
        .unwrap();
        assert_eq!(u.norms.len(), 1);
        let (l2, linf) = t.median_norms();
        assert!((l2.unwrap() - 0.75).abs() < 1e-6, "{l2:?}");
        assert!((linf.unwrap() - 0.7).abs() < 1e-6, "{linf:?}");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(Tally::new(2).median_norms(), (None, None));
    }

    #[test]
    fn one_process_reduces_to_itself() {
        let mut t = Tally::new(2);
        t.add_predictions(&ints(&[0, 1]), &ints(&[1, 1])).unwrap();
        t.norms.push((0.5, 0.1));
        let same = t.clone().reduce(&Ranks::single(), Device::Cpu).unwrap();
        assert_eq!(same, t);
    }
}
