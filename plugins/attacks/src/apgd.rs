//! APGD-CE (Croce & Hein, 2020): step-size-free PGD with momentum on the cross-entropy,
//! ℓ∞, as in AutoAttack. The step size starts at 2ε and is halved at checkpoints where
//! the loss stopped improving, restarting from the best point found.
use crate::ball::project;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `apgd-ce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgdConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
    /// Iterations.
    pub steps: u32,
    /// Fraction of improving steps below which the step size is halved (ρ).
    pub rho: f64,
    /// Momentum weight (α).
    pub momentum: f64,
}

impl Default for ApgdConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
            steps: 100,
            rho: 0.75,
            momentum: 0.75,
        }
    }
}

/// APGD-CE.
pub struct Apgd {
    config: ApgdConfig,
}

impl Configurable for Apgd {
    type Config = ApgdConfig;
    fn from_config(config: ApgdConfig) -> Result<Self, PluginError> {
        if config.steps == 0 {
            return Err(PluginError::config("[apgd-ce] steps must be at least 1"));
        }
        Ok(Self { config })
    }
}

/// The iterations after which the step size may be halved, as AutoAttack computes them:
/// the first after `⌊0.22·steps⌋`, then intervals shrinking by `⌊0.03·steps⌋` down to
/// `⌊0.06·steps⌋` (each at least 1).
pub fn checkpoints(steps: u32) -> Vec<u32> {
    let part = |f: f64| ((f * steps as f64) as u32).max(1);
    let (mut interval, decrease, minimum) = (part(0.22), part(0.03), part(0.06));
    let mut marks = Vec::new();
    let mut at = interval;
    while at <= steps {
        marks.push(at);
        interval = interval.saturating_sub(decrease).max(minimum);
        at += interval;
    }
    marks
}

/// `[N, 1, 1, 1]` view of a per-sample tensor.
fn per_sample(t: &Tensor, dims: usize) -> Result<Tensor, PluginError> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, dims - 1));
    Ok(t.f_reshape(shape)?)
}

impl Attack for Apgd {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: self.config.steps,
        }
    }

    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let c = &self.config;
        let (x, labels) = (batch.images(), batch.labels());
        let (eps, dims, n) = (c.epsilon.0, x.dim(), x.size()[0]);
        let loss_grad = |point: &Tensor| -> Result<(Tensor, Tensor, Tensor), PluginError> {
            let g = oracle.input_gradient(point, Objective::cross_entropy(&labels))?;
            let wrong = g.logits.f_argmax(-1, false)?.f_ne_tensor(&labels)?;
            Ok((g.value, g.gradient, wrong))
        };
        // Random start scaled so that the largest coordinate of each δ is ε.
        let t = x.f_rand_like()?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        let scale = t
            .f_abs()?
            .f_flatten(1, -1)?
            .f_amax([1i64].as_slice(), false)?
            .f_clamp_min(1e-12)?;
        let mut current = project(
            &x.f_add(&t.f_div(&per_sample(&scale, dims)?)?.f_mul_scalar(eps)?)?,
            &x,
            Norm::Linf,
            eps,
        )?;
        let (mut loss, mut grad, wrong) = loss_grad(&current)?;
        let mut best_loss = loss.f_detach_copy()?;
        let mut best_point = current.f_detach_copy()?;
        // Per sample, a misclassified point if one was found, else the clean image.
        let mut adversarial = current.f_where_self(&per_sample(&wrong, dims)?, &x)?;
        let mut found = wrong;
        let mut step = Tensor::f_full([n], 2.0 * eps, (Kind::Float, x.device()))?;
        let mut previous = current.f_detach_copy()?;

        let marks = checkpoints(c.steps);
        let mut mark = 0;
        let mut improved = Tensor::f_zeros([n], (Kind::Float, x.device()))?;
        let mut reduced_at_last = Tensor::f_zeros([n], (Kind::Bool, x.device()))?;
        let mut best_at_last = best_loss.f_detach_copy()?;
        let mut since = 0u32;
        for k in 0..c.steps {
            let eta = per_sample(&step, dims)?;
            let z = project(
                &current.f_add(&grad.f_sign()?.f_mul(&eta)?)?,
                &x,
                Norm::Linf,
                eps,
            )?;
            let next = if k == 0 {
                z
            } else {
                let towards = z.f_sub(&current)?.f_mul_scalar(c.momentum)?;
                let inertia = current.f_sub(&previous)?.f_mul_scalar(1.0 - c.momentum)?;
                project(
                    &current.f_add(&towards)?.f_add(&inertia)?,
                    &x,
                    Norm::Linf,
                    eps,
                )?
            };
            previous = current;
            current = next;
            let (new_loss, new_grad, wrong) = loss_grad(&current)?;
            adversarial = current.f_where_self(&per_sample(&wrong, dims)?, &adversarial)?;
            found = found.f_logical_or(&wrong)?;
            improved = improved.f_add(&new_loss.f_gt_tensor(&loss)?.f_to_kind(Kind::Float)?)?;
            let better = new_loss.f_gt_tensor(&best_loss)?;
            best_point = current.f_where_self(&per_sample(&better, dims)?, &best_point)?;
            best_loss = new_loss.f_where_self(&better, &best_loss)?;
            loss = new_loss;
            grad = new_grad;
            since += 1;
            if mark < marks.len() && k + 1 == marks[mark] {
                // Halve where too few steps improved, or where neither the step size
                // nor the best loss changed since the last checkpoint.
                let too_few = improved.f_lt(c.rho * since as f64)?;
                let stalled = reduced_at_last
                    .f_logical_not()?
                    .f_logical_and(&best_loss.f_le_tensor(&best_at_last)?)?;
                let reduce = too_few.f_logical_or(&stalled)?;
                step = step.f_div_scalar(2.0)?.f_where_self(&reduce, &step)?;
                current = best_point.f_where_self(&per_sample(&reduce, dims)?, &current)?;
                if bool::try_from(&reduce.f_any()?).unwrap_or(false) {
                    let (l, g, _) = loss_grad(&current)?;
                    loss = l;
                    grad = g;
                }
                reduced_at_last = reduce;
                best_at_last = best_loss.f_detach_copy()?;
                improved = improved.f_zero_()?;
                since = 0;
                mark += 1;
            }
        }
        // Misclassified points where found, else the highest-loss point.
        Ok(adversarial.f_where_self(&per_sample(&found, dims)?, &best_point)?)
    }
}

sat_core::register_attack!(
    Apgd,
    name = "apgd-ce",
    description = "APGD-CE (AutoAttack): step-size-free PGD with momentum on cross-entropy, linf",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::Device;

    #[test]
    fn checkpoints_follow_the_schedule() {
        assert_eq!(checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(checkpoints(5), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn stays_in_the_ball_and_is_at_least_as_strong_as_pgd() {
        use crate::pgd::{Pgd, PgdConfig};
        let adapter = LinearModel::random(5, 48, 21).oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        tch::manual_seed(3);
        let x = Tensor::rand([64, 3, 4, 4], (Kind::Float, Device::Cpu));
        // Labels the model gets right, so that accuracy can drop.
        let y = oracle.logits(&x).unwrap().argmax(-1, false);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let eps = 2.0 / 255.0;
        let mut apgd = Apgd::from_config(ApgdConfig {
            epsilon: Epsilon(eps),
            steps: 20,
            ..ApgdConfig::default()
        })
        .unwrap();
        let adv = apgd.perturb(&batch, oracle).unwrap();
        assert!((&adv - &x).abs().max().double_value(&[]) <= eps + 1e-6);
        assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
        let accuracy = |t: &Tensor| {
            oracle
                .logits(t)
                .unwrap()
                .argmax(-1, false)
                .eq_tensor(&y)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let pgd_config = PgdConfig {
            epsilon: Epsilon(eps),
            step_size: Epsilon(eps / 4.0),
            steps: 20,
            ..PgdConfig::default()
        };
        let pgd_adv = Pgd::from_config(pgd_config)
            .unwrap()
            .perturb(&batch, oracle)
            .unwrap();
        let (a_apgd, a_pgd) = (accuracy(&adv), accuracy(&pgd_adv));
        assert!(a_apgd < 1.0, "the attack flips some predictions");
        assert!(a_apgd <= a_pgd + 1e-9, "APGD-CE {a_apgd} vs PGD {a_pgd}");
    }
}
