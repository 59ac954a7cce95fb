//! Learning-rate schedules, evaluated per optimisation step.
use crate::config::ScheduleKind;

/// A schedule over a run of `epochs · steps_per_epoch` steps.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: ScheduleKind,
    base: f64,
    milestones: Vec<u32>,
    gamma: f64,
    steps_per_epoch: usize,
    total_steps: usize,
}

impl Schedule {
    /// A schedule of `kind` from the base rate `base`.
    pub fn new(
        kind: ScheduleKind,
        base: f64,
        milestones: &[u32],
        gamma: f64,
        epochs: u32,
        steps_per_epoch: usize,
    ) -> Self {
        Self {
            kind,
            base,
            milestones: milestones.to_vec(),
            gamma,
            steps_per_epoch: steps_per_epoch.max(1),
            total_steps: (epochs as usize * steps_per_epoch).max(1),
        }
    }

    /// The rate for step `step` (0-based, counted over the whole run).
    pub fn rate(&self, step: usize) -> f64 {
        let cos = |from: f64, to: f64, fraction: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * fraction.clamp(0.0, 1.0)).cos())
        };
        match self.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::Multistep => {
                let epoch = (step / self.steps_per_epoch) as u32;
                let passed = self.milestones.iter().filter(|&&m| epoch >= m).count();
                self.base * self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => cos(self.base, 0.0, step as f64 / self.total_steps as f64),
            ScheduleKind::OneCycle => {
                let initial = self.base / 25.0;
                let last = initial / 1e4;
                let up = 0.3 * self.total_steps as f64 - 1.0;
                let down = self.total_steps as f64 - 1.0;
                let s = step as f64;
                if s <= up {
                    cos(initial, self.base, s / up.max(1.0))
                } else {
                    cos(self.base, last, (s - up) / (down - up).max(1.0))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    #[test]
    fn multistep_drops_at_milestone_epochs() {
        let s = Schedule::new(ScheduleKind::Multistep, 0.1, &[2, 4], 0.1, 6, 10);
        assert!(close(s.rate(0), 0.1) && close(s.rate(19), 0.1));
        assert!(close(s.rate(20), 0.01) && close(s.rate(39), 0.01));
        assert!(close(s.rate(40), 0.001) && close(s.rate(59), 0.001));
        let c = Schedule::new(ScheduleKind::Constant, 0.3, &[], 0.1, 6, 10);
        assert!(close(c.rate(59), 0.3));
    }

    #[test]
    fn cosine_goes_from_base_through_half_to_zero() {
        let s = Schedule::new(ScheduleKind::Cosine, 0.2, &[], 0.1, 10, 10);
        assert!(close(s.rate(0), 0.2));
        assert!(close(s.rate(50), 0.1));
        assert!(s.rate(99) < 0.2 * 1e-3 && s.rate(99) > 0.0);
        assert!((1..100).all(|i| s.rate(i) < s.rate(i - 1)));
    }

    #[test]
    fn one_cycle_matches_pytorch_defaults() {
        // OneCycleLR(max_lr=0.1, total_steps=100): lr 0.004 at step 0, 0.1 at step 29,
        // 0.1 / 25 / 1e4 at step 99, and rising then falling in between.
        let s = Schedule::new(ScheduleKind::OneCycle, 0.1, &[], 0.1, 10, 10);
        assert!(close(s.rate(0), 0.004));
        assert!(close(s.rate(29), 0.1));
        assert!(close(s.rate(99), 4e-7));
        assert!((1..30).all(|i| s.rate(i) > s.rate(i - 1)));
        assert!((30..100).all(|i| s.rate(i) < s.rate(i - 1)));
    }
}
