//! The APGD family (Croce & Hein, 2020) as in AutoAttack: step-size-free PGD with
//! momentum, ℓ∞ or ℓ2. The step size starts at 2ε and is halved at checkpoints where the
//! loss stopped improving, restarting from the best point found. One implementation,
//! three registrations:
//!
//! - `apgd-ce`: cross-entropy, untargeted or (with `target`) targeted;
//! - `apgd-dlr`: the untargeted DLR loss (at least 3 classes);
//! - `apgd-t`: AutoAttack's APGD-T, the targeted DLR loss towards each of the
//!   `target_classes` most likely other classes in turn (at least 4 classes).
//!
//! Schedules and constants follow torchattacks 3.5.1 (`apgd.py`, `apgdt.py`).
use crate::ball::{per_sample_l2, project_owned};
use crate::pgd::NormName;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Objective, Oracle, PluginError, Target,
    ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `apgd-ce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgdConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Iterations per run.
    pub steps: u32,
    /// Fraction of improving steps below which the step size is halved (ρ).
    pub rho: f64,
    /// Momentum weight (α).
    pub momentum: f64,
    /// Runs; each restart attacks only the points no earlier run broke.
    pub restarts: u32,
    /// Oracle calls whose gradients are averaged per step (EOT, for randomised models).
    pub eot_iter: u32,
    /// `"none"` (untargeted), `"random"`, `"least-likely"` or a class index.
    pub target: Target,
}

impl Default for ApgdConfig {
    fn default() -> Self {
        Self {
            norm: NormName::Linf,
            epsilon: Epsilon(8.0 / 255.0),
            steps: 100,
            rho: 0.75,
            momentum: 0.75,
            restarts: 1,
            eot_iter: 1,
            target: Target::None,
        }
    }
}

/// Configuration of `apgd-dlr`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgdDlrConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Iterations per run.
    pub steps: u32,
    /// Fraction of improving steps below which the step size is halved (ρ).
    pub rho: f64,
    /// Momentum weight (α).
    pub momentum: f64,
    /// Runs; each restart attacks only the points no earlier run broke.
    pub restarts: u32,
    /// Oracle calls whose gradients are averaged per step (EOT).
    pub eot_iter: u32,
}

impl Default for ApgdDlrConfig {
    fn default() -> Self {
        let c = ApgdConfig::default();
        Self {
            norm: c.norm,
            epsilon: c.epsilon,
            steps: c.steps,
            rho: c.rho,
            momentum: c.momentum,
            restarts: c.restarts,
            eot_iter: c.eot_iter,
        }
    }
}

/// Configuration of `apgd-t`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgdTConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Iterations per run.
    pub steps: u32,
    /// Fraction of improving steps below which the step size is halved (ρ).
    pub rho: f64,
    /// Momentum weight (α).
    pub momentum: f64,
    /// Runs per target class.
    pub restarts: u32,
    /// Oracle calls whose gradients are averaged per step (EOT).
    pub eot_iter: u32,
    /// How many target classes to try (the 2nd, 3rd, … most likely clean classes),
    /// capped at the number of classes − 1.
    pub target_classes: u32,
}

impl Default for ApgdTConfig {
    fn default() -> Self {
        let c = ApgdDlrConfig::default();
        Self {
            norm: c.norm,
            epsilon: c.epsilon,
            steps: c.steps,
            rho: c.rho,
            momentum: c.momentum,
            restarts: c.restarts,
            eot_iter: c.eot_iter,
            target_classes: 9,
        }
    }
}

/// The settings every APGD variant shares.
#[derive(Debug, Clone, Copy)]
struct Settings {
    norm: Norm,
    epsilon: f64,
    steps: u32,
    rho: f64,
    momentum: f64,
    restarts: u32,
    eot_iter: u32,
}

/// `Settings` from any of the three configurations (they share these keys).
macro_rules! settings_from {
    ($($config:ty),*) => {$(
        impl From<&$config> for Settings {
            fn from(c: &$config) -> Self {
                Settings {
                    norm: c.norm.into(),
                    epsilon: c.epsilon.0,
                    steps: c.steps,
                    rho: c.rho,
                    momentum: c.momentum,
                    restarts: c.restarts,
                    eot_iter: c.eot_iter,
                }
            }
        }
    )*};
}
settings_from!(ApgdConfig, ApgdDlrConfig, ApgdTConfig);

impl Settings {
    /// Checks the shared keys of the attack `name`.
    fn checked(self, name: &str) -> Result<Self, PluginError> {
        let fail = |what: &str| Err(PluginError::config(format!("[{name}] {what}")));
        crate::ranges::check(
            name,
            &[
                ("steps", self.steps),
                ("restarts", self.restarts),
                ("eot_iter", self.eot_iter),
            ],
        )?;
        if !(self.rho > 0.0 && self.rho <= 1.0) {
            return fail("rho must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return fail("momentum must be in [0, 1]");
        }
        Ok(self)
    }

    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: self.norm,
            epsilon: self.epsilon,
            steps: self.steps,
        }
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

/// What one run ascends and what counts as success.
enum Goal {
    /// Cross-entropy against the labels; success: misclassified.
    CrossEntropy { labels: Tensor },
    /// `−CE(targets)`; success: the prediction is the target.
    TowardsCrossEntropy { targets: Tensor },
    /// Untargeted DLR; success: misclassified.
    Dlr { labels: Tensor },
    /// Targeted DLR (APGD-T); success: misclassified.
    TowardsDlr { labels: Tensor, targets: Tensor },
}

impl Goal {
    /// The same goal for the samples `index` only.
    fn select(&self, index: &Tensor) -> Result<Goal, PluginError> {
        let pick = |t: &Tensor| t.f_index_select(0, index);
        Ok(match self {
            Goal::CrossEntropy { labels } => Goal::CrossEntropy {
                labels: pick(labels)?,
            },
            Goal::TowardsCrossEntropy { targets } => Goal::TowardsCrossEntropy {
                targets: pick(targets)?,
            },
            Goal::Dlr { labels } => Goal::Dlr {
                labels: pick(labels)?,
            },
            Goal::TowardsDlr { labels, targets } => Goal::TowardsDlr {
                labels: pick(labels)?,
                targets: pick(targets)?,
            },
        })
    }

    /// Per-sample loss, its input gradient and per-sample success at `point`.
    fn evaluate(&self, point: &Tensor, oracle: Oracle<'_, '_>) -> Result<Probe, PluginError> {
        let objective = match self {
            Goal::CrossEntropy { labels } => Objective::cross_entropy(labels),
            Goal::TowardsCrossEntropy { targets } => Objective::cross_entropy(targets),
            Goal::Dlr { labels } => Objective::dlr(labels),
            Goal::TowardsDlr { labels, targets } => Objective::dlr_targeted(labels, targets),
        };
        let g = oracle.input_gradient(point, objective)?;
        let prediction = g.logits.f_argmax(-1, false)?;
        Ok(match self {
            Goal::TowardsCrossEntropy { targets } => Probe {
                loss: g.value.f_neg()?,
                gradient: g.gradient.f_neg()?,
                success: prediction.f_eq_tensor(targets)?,
            },
            Goal::CrossEntropy { labels }
            | Goal::Dlr { labels }
            | Goal::TowardsDlr { labels, .. } => Probe {
                loss: g.value,
                gradient: g.gradient,
                success: prediction.f_ne_tensor(labels)?,
            },
        })
    }

    /// As [`evaluate`](Self::evaluate), with the gradient averaged over `calls` oracle
    /// calls (EOT); loss and success are those of the last call, as in torchattacks.
    fn evaluate_eot(
        &self,
        point: &Tensor,
        oracle: Oracle<'_, '_>,
        calls: u32,
    ) -> Result<Probe, PluginError> {
        let mut probe = self.evaluate(point, oracle)?;
        if calls > 1 {
            let mut total = probe.gradient.f_detach_copy()?;
            for _ in 1..calls {
                probe = self.evaluate(point, oracle)?;
                total = total.f_add(&probe.gradient)?;
            }
            probe.gradient = total.f_div_scalar(f64::from(calls))?;
        }
        Ok(probe)
    }
}

/// One evaluation of the loss.
struct Probe {
    loss: Tensor,
    gradient: Tensor,
    success: Tensor,
}

/// The outcome of one APGD run, per sample.
struct Run {
    /// The highest loss reached.
    best_loss: Tensor,
    /// A successful point where `found`, else the highest-loss point.
    result: Tensor,
    /// Whether some iterate succeeded.
    found: Tensor,
}

/// The random start: ℓ∞ `ε·t/‖t‖∞` with `t` uniform in `[−1, 1]`, ℓ2 `ε·t/‖t‖₂` with
/// `t` Gaussian, clamped to `[0, 1]` (as torchattacks).
fn start(x: &Tensor, norm: Norm, eps: f64) -> Result<Tensor, PluginError> {
    let dims = x.dim();
    let (t, size) = match norm {
        Norm::Linf => {
            let t = x.f_rand_like()?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
            let size = t
                .f_abs()?
                .f_flatten(1, -1)?
                .f_amax([1i64].as_slice(), false)?
                .f_clamp_min(1e-12)?;
            (t, per_sample(&size, dims)?)
        }
        Norm::L2 => {
            let t = x.f_randn_like()?;
            let size = per_sample_l2(&t)?.f_add_scalar(1e-12)?;
            (t, size)
        }
    };
    // x + ε·t/‖t‖, clamped, in the storage of the fresh quotient (addition commutes).
    let mut point = t.f_div(&size)?;
    let _ = point.f_mul_scalar_(eps)?;
    let _ = point.f_add_(x)?;
    let _ = point.f_clamp_(0.0, 1.0)?;
    Ok(point)
}

/// The step direction: `sign(g)` for ℓ∞, `g/(‖g‖₂ + 10⁻¹²)` for ℓ2.
fn direction(gradient: &Tensor, norm: Norm) -> Result<Tensor, PluginError> {
    Ok(match norm {
        Norm::Linf => gradient.f_sign()?,
        Norm::L2 => gradient.f_div(&per_sample_l2(gradient)?.f_add_scalar(1e-12)?)?,
    })
}

/// One APGD run from a random start on `x`.
///
/// Every full-size tensor of the loop is computed in storage the run owns (the fresh
/// step direction, the copies kept of the best and the successful points): in-place
/// operations doing exactly the arithmetic of their out-of-place forms (addition
/// commutes exactly), so the same results bit for bit with one new image-sized tensor
/// per step instead of about fifteen.
fn run(s: &Settings, x: &Tensor, goal: &Goal, oracle: Oracle<'_, '_>) -> Result<Run, PluginError> {
    let (eps, dims, n, device) = (s.epsilon, x.dim(), x.size()[0], x.device());
    let mut current = start(x, s.norm, eps)?;
    let Probe {
        loss,
        gradient: mut grad,
        success,
    } = goal.evaluate_eot(&current, oracle, s.eot_iter)?;
    let mut best_loss = loss.f_detach_copy()?;
    let best_point = current.f_detach_copy()?;
    let best_grad = grad.f_detach_copy()?;
    let adversarial = current.f_detach_copy()?;
    let mut found = success;
    let mut step = Tensor::f_full([n], 2.0 * eps, (Kind::Float, device))?;
    // Replaced by the start itself before the first step reads it.
    let mut previous = current.shallow_clone();
    // torchattacks counts improvements on a zero-initialised loss history, so the first
    // step of a run is compared with a loss of 0.
    let mut last_loss = loss.f_zeros_like()?;

    let marks = checkpoints(s.steps);
    let mut mark = 0;
    let mut improved = Tensor::f_zeros([n], (Kind::Float, device))?;
    let mut reduced_at_last = Tensor::f_ones([n], (Kind::Bool, device))?;
    let mut best_at_last = best_loss.f_detach_copy()?;
    let mut since = 0u32;
    for k in 0..s.steps {
        let eta = per_sample(&step, dims)?;
        // z = P(current + η·direction)
        let mut z = direction(&grad, s.norm)?;
        let _ = z.f_mul_(&eta)?;
        let _ = z.f_add_(&current)?;
        let z = project_owned(z, x, s.norm, eps)?;
        let next = if k == 0 {
            z
        } else {
            // P(current + α·(z − current) + (1 − α)·(current − previous)), in z's storage.
            let mut inertia = current.f_sub(&previous)?;
            let _ = inertia.f_mul_scalar_(1.0 - s.momentum)?;
            let mut towards = z;
            let _ = towards.f_sub_(&current)?;
            let _ = towards.f_mul_scalar_(s.momentum)?;
            let _ = towards.f_add_(&current)?;
            let _ = towards.f_add_(&inertia)?;
            project_owned(towards, x, s.norm, eps)?
        };
        previous = current;
        current = next;
        let probe = goal.evaluate_eot(&current, oracle, s.eot_iter)?;
        let success_x = per_sample(&probe.success, dims)?;
        let _ = current.f_where_self_out(&adversarial, &success_x, &adversarial)?;
        found = found.f_logical_or(&probe.success)?;
        improved = improved.f_add(&probe.loss.f_gt_tensor(&last_loss)?.f_to_kind(Kind::Float)?)?;
        let better = probe.loss.f_gt_tensor(&best_loss)?;
        let better_x = per_sample(&better, dims)?;
        let _ = current.f_where_self_out(&best_point, &better_x, &best_point)?;
        let _ = probe
            .gradient
            .f_where_self_out(&best_grad, &better_x, &best_grad)?;
        best_loss = probe.loss.f_where_self(&better, &best_loss)?;
        last_loss = probe.loss;
        grad = probe.gradient;
        since += 1;
        if mark < marks.len() && k + 1 == marks[mark] {
            // Halve where too few steps improved, or where the step size was not just
            // halved and the best loss did not rise since the last checkpoint; those
            // samples continue from their best point.
            let too_few = improved.f_le(s.rho * f64::from(since))?;
            let stalled = reduced_at_last
                .f_logical_not()?
                .f_logical_and(&best_loss.f_le_tensor(&best_at_last)?)?;
            let reduce = too_few.f_logical_or(&stalled)?;
            let reduce_x = per_sample(&reduce, dims)?;
            step = step.f_div_scalar(2.0)?.f_where_self(&reduce, &step)?;
            let _ = best_point.f_where_self_out(&current, &reduce_x, &current)?;
            grad = best_grad.f_where_self(&reduce_x, &grad)?;
            reduced_at_last = reduce;
            best_at_last = best_loss.f_detach_copy()?;
            improved = improved.f_zero_()?;
            since = 0;
            mark += 1;
        }
    }
    let result = adversarial.f_where_self(&per_sample(&found, dims)?, &best_point)?;
    Ok(Run {
        best_loss,
        result,
        found,
    })
}

/// The indices of the samples where `done` is false, `[M]` int64.
fn pending(done: &Tensor) -> Result<Tensor, PluginError> {
    Ok(done.f_logical_not()?.f_nonzero()?.f_flatten(0, -1)?)
}

/// `s.restarts` runs of `goal`: the first on every sample, each further one on the
/// samples no run has succeeded on. Per sample: a successful point if one was found,
/// else the highest-loss point over the runs.
fn with_restarts(
    s: &Settings,
    x: &Tensor,
    goal: &Goal,
    oracle: Oracle<'_, '_>,
) -> Result<Tensor, PluginError> {
    let first = run(s, x, goal, oracle)?;
    let (mut result, mut best_loss, mut found) = (first.result, first.best_loss, first.found);
    for _ in 1..s.restarts {
        let index = pending(&found)?;
        if index.numel() == 0 {
            break;
        }
        let again = run(
            s,
            &x.f_index_select(0, &index)?,
            &goal.select(&index)?,
            oracle,
        )?;
        let old_loss = best_loss.f_index_select(0, &index)?;
        let take = again
            .found
            .f_logical_or(&again.best_loss.f_gt_tensor(&old_loss)?)?;
        let take_x = per_sample(&take, x.dim())?;
        let rows = again
            .result
            .f_where_self(&take_x, &result.f_index_select(0, &index)?)?;
        result = result.f_index_copy(0, &index, &rows)?;
        best_loss =
            best_loss.f_index_copy(0, &index, &again.best_loss.f_where_self(&take, &old_loss)?)?;
        found = found.f_index_copy(0, &index, &again.found)?;
    }
    Ok(result.f_to_kind(Kind::Float)?)
}

/// Errors unless the model has at least `needed` classes.
fn require_classes(
    name: &str,
    oracle: Oracle<'_, '_>,
    needed: u32,
    why: &str,
) -> Result<u32, PluginError> {
    let classes = oracle.num_classes()?;
    if classes < needed {
        return Err(PluginError::config(format!(
            "[{name}] {why} needs at least {needed} classes, the model has {classes}"
        )));
    }
    Ok(classes)
}

/// APGD-CE, untargeted or targeted.
pub struct Apgd {
    settings: Settings,
    target: Target,
    targets: Option<Tensor>,
}

impl Configurable for Apgd {
    type Config = ApgdConfig;
    fn from_config(c: ApgdConfig) -> Result<Self, PluginError> {
        let settings = Settings::from(&c).checked("apgd-ce")?;
        Ok(Self {
            settings,
            target: c.target,
            targets: None,
        })
    }
}

impl Attack for Apgd {
    fn threat_model(&self) -> ThreatModel {
        self.settings.threat_model()
    }

    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        self.targets = None;
        let (x, labels) = (batch.images(), batch.labels());
        let goal = if self.target.is_targeted() {
            let clean = oracle.logits(&x)?;
            let targets = self
                .target
                .choose(&clean, &labels)?
                .ok_or_else(|| PluginError::runtime("[apgd-ce] no targets were chosen"))?;
            self.targets = Some(targets.shallow_clone());
            Goal::TowardsCrossEntropy { targets }
        } else {
            Goal::CrossEntropy {
                labels: labels.shallow_clone(),
            }
        };
        with_restarts(&self.settings, &x, &goal, oracle)
    }

    fn targets(&self) -> Option<Tensor> {
        self.targets.as_ref().map(Tensor::shallow_clone)
    }
}

/// APGD-DLR (untargeted).
pub struct ApgdDlr {
    settings: Settings,
}

impl Configurable for ApgdDlr {
    type Config = ApgdDlrConfig;
    fn from_config(c: ApgdDlrConfig) -> Result<Self, PluginError> {
        let settings = Settings::from(&c).checked("apgd-dlr")?;
        Ok(Self { settings })
    }
}

impl Attack for ApgdDlr {
    fn threat_model(&self) -> ThreatModel {
        self.settings.threat_model()
    }

    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        require_classes("apgd-dlr", oracle, 3, "the DLR loss")?;
        let (x, labels) = (batch.images(), batch.labels());
        with_restarts(
            &self.settings,
            &x,
            &Goal::Dlr {
                labels: labels.shallow_clone(),
            },
            oracle,
        )
    }
}

/// APGD-T: targeted DLR towards each of the most likely other classes in turn.
pub struct ApgdT {
    settings: Settings,
    target_classes: u32,
}

impl Configurable for ApgdT {
    type Config = ApgdTConfig;
    fn from_config(c: ApgdTConfig) -> Result<Self, PluginError> {
        crate::ranges::check("apgd-t", &[("target_classes", c.target_classes)])?;
        let settings = Settings::from(&c).checked("apgd-t")?;
        Ok(Self {
            settings,
            target_classes: c.target_classes,
        })
    }
}

impl Attack for ApgdT {
    fn threat_model(&self) -> ThreatModel {
        self.settings.threat_model()
    }

    /// Points misclassified on the clean input are returned unchanged; the others are
    /// attacked towards the 2nd, 3rd, … most likely clean class, each run only on the
    /// points no earlier run broke. A point no run broke is returned clean (as
    /// torchattacks).
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let classes = require_classes("apgd-t", oracle, 4, "the targeted DLR loss")?;
        let (x, labels) = (batch.images(), batch.labels());
        let clean = oracle.logits(&x)?;
        let ranking = clean.f_argsort(-1, true)?;
        let mut found = clean.f_argmax(-1, false)?.f_ne_tensor(&labels)?;
        let mut result = x.f_detach_copy()?;
        let dims = x.dim();
        for rank in 1..=i64::from(self.target_classes.min(classes - 1)) {
            for _ in 0..self.settings.restarts {
                let index = pending(&found)?;
                if index.numel() == 0 {
                    return Ok(result.f_to_kind(Kind::Float)?);
                }
                let goal = Goal::TowardsDlr {
                    labels: labels.f_index_select(0, &index)?,
                    targets: ranking.f_index_select(0, &index)?.f_select(1, rank)?,
                };
                let r = run(&self.settings, &x.f_index_select(0, &index)?, &goal, oracle)?;
                let rows = r.result.f_where_self(
                    &per_sample(&r.found, dims)?,
                    &result.f_index_select(0, &index)?,
                )?;
                result = result.f_index_copy(0, &index, &rows)?;
                found = found.f_index_copy(0, &index, &r.found)?;
            }
        }
        Ok(result.f_to_kind(Kind::Float)?)
    }
}

sat_core::register_attack!(
    Apgd,
    name = "apgd-ce",
    description = "APGD-CE (AutoAttack): step-size-free PGD with momentum on cross-entropy, linf or l2, optionally targeted",
);

sat_core::register_attack!(
    ApgdDlr,
    name = "apgd-dlr",
    description = "APGD-DLR (AutoAttack): APGD on the difference-of-logits-ratio loss, linf or l2",
);

sat_core::register_attack!(
    ApgdT,
    name = "apgd-t",
    description = "APGD-T (AutoAttack): targeted DLR towards the most likely other classes in turn, linf or l2",
);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pgd::{Pgd, PgdConfig};
    use sat_core::{testing::LinearModel, OracleAdapter, Phase};
    use std::cell::Cell;
    use tch::Device;

    /// A linear model on `[32, 3, 4, 4]` images, labelled with its own clean predictions
    /// (so that accuracy starts at 1 and can only drop).
    fn setup(classes: i64, seed: i64) -> (OracleAdapter<LinearModel>, Tensor, Tensor) {
        let adapter = LinearModel::random(classes, 48, seed).oracle();
        tch::manual_seed(3);
        let x = Tensor::rand([32, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = {
            let oracle_ref = adapter.as_ref();
            Oracle::new(&oracle_ref)
                .logits(&x)
                .unwrap()
                .argmax(-1, false)
        };
        (adapter, x, y)
    }

    /// Builds the attack `name` from TOML text.
    fn build(name: &str, text: &str) -> Box<dyn Attack> {
        match name {
            "apgd-ce" => {
                Box::new(Apgd::from_config(sat_core::parse_config(name, text).unwrap()).unwrap())
            }
            "apgd-dlr" => {
                Box::new(ApgdDlr::from_config(sat_core::parse_config(name, text).unwrap()).unwrap())
            }
            "apgd-t" => {
                Box::new(ApgdT::from_config(sat_core::parse_config(name, text).unwrap()).unwrap())
            }
            other => panic!("unknown attack {other}"),
        }
    }

    use crate::tests::accuracy;

    fn size(delta: &Tensor, norm: &str) -> f64 {
        if norm == "linf" {
            delta.abs().max().double_value(&[])
        } else {
            per_sample_l2(delta).unwrap().max().double_value(&[])
        }
    }

    #[test]
    fn checkpoints_follow_the_schedule() {
        let _generator = crate::tests::generator();
        assert_eq!(checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(checkpoints(5), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn every_variant_and_norm_stays_in_ball_and_box_is_deterministic_and_lowers_accuracy() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(5, 21);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let before = x.copy();
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        for name in ["apgd-ce", "apgd-dlr", "apgd-t"] {
            for (norm, eps) in [("linf", 4.0 / 255.0), ("l2", 0.25)] {
                let text = format!("norm = \"{norm}\"\nepsilon = {eps}\nsteps = 5");
                let mut attack = build(name, &text);
                tch::manual_seed(7);
                let adv = attack.perturb(&batch, oracle).unwrap();
                let what = format!("{name} {norm}");
                assert_eq!(adv.size(), x.size(), "{what}");
                assert_eq!(adv.kind(), Kind::Float, "{what}");
                assert!(
                    size(&(&adv - &x), norm) <= eps + 1e-5,
                    "{what}: outside the ball"
                );
                assert!(
                    adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0,
                    "{what}: outside the box"
                );
                assert!(x.equal(&before), "{what}: input unchanged");
                let a = accuracy(oracle, &adv, &y);
                assert!(a < 0.9, "{what}: accuracy {a} should drop from 1");
                tch::manual_seed(7);
                let again = attack.perturb(&batch, oracle).unwrap();
                assert!(adv.equal(&again), "{what}: deterministic under manual_seed");
                assert!(attack.targets().is_none(), "{what}: untargeted");
                assert_eq!(attack.threat_model().norm.as_str(), norm);
            }
        }
    }

    #[test]
    fn stays_in_the_ball_and_is_at_least_as_strong_as_pgd() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(5, 21);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
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
        let (a_apgd, a_pgd) = (accuracy(oracle, &adv, &y), accuracy(oracle, &pgd_adv, &y));
        assert!(a_apgd < 1.0, "the attack flips some predictions");
        assert!(a_apgd <= a_pgd + 1e-9, "APGD-CE {a_apgd} vs PGD {a_pgd}");
    }

    #[test]
    fn apgd_t_is_at_least_as_strong_as_apgd_ce() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(10, 4);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let text = "epsilon = 0.004\nsteps = 5";
        tch::manual_seed(1);
        let ce = build("apgd-ce", text).perturb(&batch, oracle).unwrap();
        tch::manual_seed(1);
        let t = build("apgd-t", text).perturb(&batch, oracle).unwrap();
        let (a_ce, a_t) = (accuracy(oracle, &ce, &y), accuracy(oracle, &t, &y));
        assert!(
            a_ce > 0.0 && a_ce < 1.0,
            "a setup where APGD-CE breaks some points: {a_ce}"
        );
        assert!(a_t <= a_ce, "APGD-T {a_t} vs APGD-CE {a_ce}");
        // APGD-T leaves the points it cannot break clean.
        let unbroken = oracle.logits(&t).unwrap().argmax(-1, false).eq_tensor(&y);
        let delta = (&t - &x).flatten(1, -1).abs().amax(1, false);
        let moved_unbroken = delta.gt(0.0).logical_and(&unbroken).sum(Kind::Int64);
        assert_eq!(
            moved_unbroken.int64_value(&[]),
            0,
            "unbroken points are clean"
        );
    }

    #[test]
    fn targeted_apgd_ce_reaches_its_targets_more_often_and_reports_them() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(5, 8);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let text = "epsilon = 0.1\nsteps = 10\ntarget = \"random\"";
        let mut targeted = build("apgd-ce", text);
        let adv = targeted.perturb(&batch, oracle).unwrap();
        let targets = targeted.targets().expect("targeted attacks report targets");
        assert_eq!(targets.size(), vec![32]);
        assert_eq!(targets.eq_tensor(&y).sum(Kind::Int64).int64_value(&[]), 0);
        let untargeted = build("apgd-ce", "epsilon = 0.1\nsteps = 10")
            .perturb(&batch, oracle)
            .unwrap();
        let hits = |t: &Tensor| {
            oracle
                .logits(t)
                .unwrap()
                .argmax(-1, false)
                .eq_tensor(&targets)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[])
        };
        let (h_t, h_u) = (hits(&adv), hits(&untargeted));
        assert!(h_t > h_u, "targeted {h_t} vs untargeted {h_u}");
        assert!((&adv - &x).abs().max().double_value(&[]) <= 0.1 + 1e-6);
    }

    #[test]
    fn more_restarts_are_never_weaker() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(5, 21);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let mut accuracies = Vec::new();
        for restarts in [1, 3] {
            let text = format!("epsilon = 0.006\nsteps = 5\nrestarts = {restarts}");
            tch::manual_seed(2);
            let adv = build("apgd-dlr", &text).perturb(&batch, oracle).unwrap();
            accuracies.push(accuracy(oracle, &adv, &y));
        }
        assert!(
            accuracies[0] > 0.0,
            "one restart leaves some points: {accuracies:?}"
        );
        assert!(accuracies[1] <= accuracies[0], "{accuracies:?}");
    }

    /// Counts gradient queries.
    struct Counting {
        model: LinearModel,
        queries: Cell<usize>,
    }

    impl sat_core::OracleBackend for Counting {
        fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
            self.model.logits(images)
        }
        fn input_gradient(
            &self,
            images: &Tensor,
            objective: &Objective,
        ) -> Result<sat_core::Gradient, PluginError> {
            self.queries.set(self.queries.get() + 1);
            self.model.input_gradient(images, objective)
        }
        fn num_classes(&self) -> u32 {
            self.model.num_classes()
        }
    }

    #[test]
    fn eot_averages_that_many_gradients_per_step() {
        let _generator = crate::tests::generator();
        let x = Tensor::rand([4, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let mut results = Vec::new();
        for eot in [1usize, 3] {
            let adapter = OracleAdapter(Counting {
                model: LinearModel::random(5, 48, 5),
                queries: Cell::new(0),
            });
            let oracle_ref = adapter.as_ref();
            let text = format!("steps = 6\neot_iter = {eot}");
            tch::manual_seed(9);
            results.push(
                build("apgd-ce", &text)
                    .perturb(&batch, Oracle::new(&oracle_ref))
                    .unwrap(),
            );
            assert_eq!(
                adapter.0.queries.get(),
                eot * 7,
                "eot {eot}: start + 6 steps"
            );
        }
        // A deterministic model: the averaged gradient has the same sign.
        assert!(results[0].allclose(&results[1], 1e-6, 1e-6, false));
    }

    #[test]
    fn too_few_classes_and_bad_keys_are_config_errors() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(3, 1);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
        let e = build("apgd-t", "").perturb(&batch, oracle).unwrap_err();
        assert!(e.message.contains("at least 4 classes"), "{e}");
        assert!(build("apgd-dlr", "steps = 2")
            .perturb(&batch, oracle)
            .is_ok());
        let (adapter2, x2, y2) = setup(2, 1);
        let oracle_ref2 = adapter2.as_ref();
        let batch2 = Batch::new(&x2, &y2, 0, 1, Phase::Evaluation);
        let e = build("apgd-dlr", "")
            .perturb(&batch2, Oracle::new(&oracle_ref2))
            .unwrap_err();
        assert!(e.message.contains("at least 3 classes"), "{e}");
        let reject = |name: &str, text: &str| -> Option<PluginError> {
            match name {
                "apgd-ce" => Apgd::from_config(sat_core::parse_config(name, text).ok()?).err(),
                "apgd-dlr" => ApgdDlr::from_config(sat_core::parse_config(name, text).ok()?).err(),
                _ => ApgdT::from_config(sat_core::parse_config(name, text).ok()?).err(),
            }
        };
        for (name, text, key) in [
            ("apgd-ce", "restarts = 0", "restarts"),
            ("apgd-dlr", "eot_iter = 0", "eot_iter"),
            ("apgd-t", "target_classes = 0", "target_classes"),
            ("apgd-ce", "steps = 0", "steps"),
            ("apgd-ce", "rho = 0.0", "rho"),
            ("apgd-t", "momentum = 1.5", "momentum"),
        ] {
            let e =
                reject(name, text).unwrap_or_else(|| panic!("{name}: `{text}` must be rejected"));
            assert!(e.message.contains(key), "{name}: {e}");
        }
        assert!(reject("apgd-ce", "norm = \"l2\"\ntarget = 2\nrestarts = 2").is_none());
        assert!(sat_core::parse_config::<ApgdTConfig>("apgd-t", "target = 1").is_err());
    }
}
