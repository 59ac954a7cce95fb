//! The Square Attack (Andriushchenko et al., 2020): a score-based random search that only
//! reads logits. Each query changes one random square window of the perturbation and is
//! kept when the margin `z_y − max_{j≠y} z_j` drops; the window shrinks on a fixed
//! schedule. ℓ∞ starts from vertical stripes of ±ε, ℓ2 from a grid of ±`η` patterns.
//! Schedules, initialisations and proposals follow torchattacks 3.5.1 (`square.py`).
use crate::ball::per_sample_l2;
use crate::pgd::NormName;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Oracle, PluginError, ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Configuration of `square`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SquareConfig {
    /// `"linf"` or `"l2"`.
    pub norm: NormName,
    /// Radius of the ball.
    pub epsilon: Epsilon,
    /// Queries per run (after the one of the initial point).
    pub queries: u32,
    /// Initial fraction of the image a window covers (`p`).
    pub p_init: f64,
    /// Runs; each restart attacks only the points no earlier run broke.
    pub restarts: u32,
    /// When set, libtorch's generator is reseeded with it at the start of every call,
    /// as torchattacks' and AutoAttack's `seed` do (to reproduce their draws exactly);
    /// unset, the draws come from the host's per-batch stream.
    pub seed: Option<u64>,
}

impl Default for SquareConfig {
    fn default() -> Self {
        Self {
            norm: NormName::Linf,
            epsilon: Epsilon(8.0 / 255.0),
            queries: 5000,
            p_init: 0.8,
            restarts: 1,
            seed: None,
        }
    }
}

/// The Square Attack with the margin loss.
pub struct Square {
    config: SquareConfig,
}

impl Configurable for Square {
    type Config = SquareConfig;
    fn from_config(config: SquareConfig) -> Result<Self, PluginError> {
        crate::ranges::check(
            "square",
            &[("queries", config.queries), ("restarts", config.restarts)],
        )?;
        if !(config.p_init > 0.0 && config.p_init <= 1.0) {
            return Err(PluginError::config("[square] p_init must be in (0, 1]"));
        }
        Ok(Self { config })
    }
}

/// The window fraction `p` at query `i` of `queries`: `p_init` halved at iterations
/// 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10 000-query schedule, rescaled
/// to `queries` (torchattacks' `p_selection` with `resc_schedule`).
pub fn p_selection(p_init: f64, i: u32, queries: u32) -> f64 {
    let it = (f64::from(i) / f64::from(queries) * 10_000.0) as u32;
    let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
        .iter()
        .filter(|&&bound| it > bound)
        .count();
    p_init / f64::from(1u32 << halvings)
}

/// torchattacks' `eta_rectangles(x, y)`: nested rectangles around the centre weighted
/// `1/(k+1)²`, unit ℓ2 norm, row-major `x × y`.
fn eta_rectangles(x: usize, y: usize) -> Vec<f64> {
    let mut delta = vec![0.0; x * y];
    let (x_c, y_c) = (x / 2 + 1, y / 2 + 1);
    let (mut r0, mut c0) = (x_c as i64 - 1, y_c as i64 - 1);
    for k in 0..x_c.max(y_c) as i64 {
        let rows = r0.max(0) as usize..((r0 + 2 * k + 1).min(x as i64)).max(0) as usize;
        let cols = c0.max(0) as usize..((c0 + 2 * k + 1).min(y as i64)).max(0) as usize;
        for r in rows {
            for c in cols.clone() {
                delta[r * y + c] += 1.0 / ((k + 1) * (k + 1)) as f64;
            }
        }
        r0 -= 1;
        c0 -= 1;
    }
    normalised(delta)
}

/// `v / ‖v‖₂` (unchanged when zero).
fn normalised(v: Vec<f64>) -> Vec<f64> {
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.into_iter().map(|a| a / norm).collect()
    } else {
        v
    }
}

/// torchattacks' `eta(s)`: `+` rectangles on the top half, `−` on the bottom, unit ℓ2
/// norm, transposed with probability ½; `[s, s]` float32 on `device`.
fn eta(s: usize, device: Device) -> Result<Tensor, PluginError> {
    let top = eta_rectangles(s / 2, s);
    let bottom = eta_rectangles(s - s / 2, s);
    let values: Vec<f64> = top
        .into_iter()
        .chain(bottom.into_iter().map(|a| -a))
        .collect();
    let values: Vec<f32> = normalised(values).into_iter().map(|a| a as f32).collect();
    let mut pattern = Tensor::from_slice(&values).f_reshape([s as i64, s as i64])?;
    // As torchattacks: the coin comes from the CPU generator.
    if Tensor::f_rand([1], (Kind::Float, Device::Cpu))?.double_value(&[0]) > 0.5 {
        pattern = pattern.f_tr()?;
    }
    Ok(pattern.f_contiguous()?.f_to_device(device)?)
}

/// Random signs ±1 shaped `shape`.
fn random_signs(shape: &[i64], device: Device) -> Result<Tensor, PluginError> {
    Ok(Tensor::f_rand(shape, (Kind::Float, device))?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?
        .f_sign()?)
}

/// A random integer in `[0, span)` (0 when `span ≤ 0`), as torchattacks' `random_int`.
fn random_offset(span: i64, device: Device) -> Result<i64, PluginError> {
    let r = Tensor::f_rand([1], (Kind::Float, device))?.double_value(&[0]);
    Ok((((span as f64) * r) as i64).max(0))
}

/// The `s × s` window at `(row, col)` of the last two dimensions.
fn window(t: &Tensor, row: i64, col: i64, s: i64) -> Result<Tensor, PluginError> {
    Ok(t.f_narrow(2, row, s)?.f_narrow(3, col, s)?)
}

/// Rescales each sample of `delta` to unit ℓ2 norm.
fn unit_l2(delta: &Tensor) -> Result<Tensor, PluginError> {
    Ok(delta.f_div(&per_sample_l2(delta)?.f_add_scalar(1e-12)?)?)
}

/// `z_y − max_{j≠y} z_j` on `images`: positive while correctly classified.
fn margin(oracle: Oracle<'_, '_>, images: &Tensor, labels: &Tensor) -> Result<Tensor, PluginError> {
    let logits = oracle.logits(images)?.f_to_kind(Kind::Float)?;
    let index = labels.f_unsqueeze(1)?;
    let own = logits.f_gather(1, &index, false)?.f_squeeze_dim(1)?;
    let others = logits
        .f_scatter_value(1, &index, f64::NEG_INFINITY)?
        .f_amax([-1i64].as_slice(), false)?;
    Ok(own.f_sub(&others)?)
}

impl Square {
    /// The ℓ∞ start: `x + ε·s` with one random sign per (channel, column).
    fn linf_start(&self, x: &Tensor) -> Result<Tensor, PluginError> {
        let size = x.size();
        let signs = random_signs(&[size[0], size[1], 1, size[3]], x.device())?;
        Ok(x.f_add(&signs.f_mul_scalar(self.config.epsilon.0)?)?
            .f_clamp(0.0, 1.0)?)
    }

    /// The ℓ2 start: a grid of `±η` windows of side `h/5` with random signs per
    /// (sample, channel), scaled to norm ε.
    fn l2_start(&self, x: &Tensor) -> Result<Tensor, PluginError> {
        let size = x.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let s = (h.min(w) / 5).max(1);
        let first = ((h - 5 * s) / 2).max(0);
        let delta = x.f_zeros_like()?;
        let mut row = first;
        for _ in 0..h / s {
            let mut col = first;
            for _ in 0..w / s {
                // Drawn even for windows past the edge (which torchattacks' slicing
                // drops), so that the generator advances as there.
                let pattern = eta(s as usize, x.device())?.f_reshape([1, 1, s, s])?;
                let add = pattern.f_mul(&random_signs(&[n, c, 1, 1], x.device())?)?;
                if row + s <= h && col + s <= w {
                    let mut target = window(&delta, row, col, s)?;
                    let _ = target.f_add_(&add)?;
                }
                col += s;
            }
            row += s;
        }
        Ok(
            x.f_add(&unit_l2(&delta)?.f_mul_scalar(self.config.epsilon.0)?)?
                .f_clamp(0.0, 1.0)?,
        )
    }

    /// The ℓ∞ proposal: one `s × s` window (shared by the batch) set to `±2ε` per
    /// channel on top of the best point, then projected.
    fn linf_proposal(&self, x: &Tensor, best: &Tensor, p: f64) -> Result<Tensor, PluginError> {
        let size = x.size();
        let (c, h, w) = (size[1], size[2], size[3]);
        let eps = self.config.epsilon.0;
        let s = ((p * (h * w) as f64).sqrt().round() as i64).clamp(1, h.min(w));
        let (row, col) = (
            random_offset(h - s, x.device())?,
            random_offset(w - s, x.device())?,
        );
        let step = Tensor::f_zeros([c, h, w], (Kind::Float, x.device()))?;
        let signs = random_signs(&[c, 1, 1], x.device())?.f_mul_scalar(2.0 * eps)?;
        let mut target = step.f_narrow(1, row, s)?.f_narrow(2, col, s)?;
        target.f_copy_(&signs.f_expand([c, s, s], false)?)?;
        let moved = best.f_add(&step)?;
        Ok(moved
            .f_clamp_min_tensor(&x.f_sub_scalar(eps)?)?
            .f_clamp_max_tensor(&x.f_add_scalar(eps)?)?
            .f_clamp(0.0, 1.0)?)
    }

    /// The ℓ2 proposal: a fresh `±η` pattern merged into one window, a second window
    /// emptied, the freed budget moved into the first; then rescaled to norm ε.
    fn l2_proposal(&self, x: &Tensor, best: &Tensor, p: f64) -> Result<Tensor, PluginError> {
        let size = x.size();
        let (m, c, h, w) = (size[0], size[1], size[2], size[3]);
        let eps = self.config.epsilon.0;
        let mut s = ((p * (h * w) as f64).sqrt().round() as i64).max(3);
        if s % 2 == 0 {
            s += 1;
        }
        let s = s.min(h.min(w));
        let device = x.device();
        let delta = best.f_sub(x)?;
        let (row, col) = (random_offset(h - s, device)?, random_offset(w - s, device)?);
        let window_norm = |t: &Tensor| -> Result<Tensor, PluginError> {
            Ok(t.f_square()?
                .f_sum_dim_intlist([-2i64, -1].as_slice(), true, Kind::Float)?
                .f_sqrt()?)
        };
        let old = window(&delta, row, col, s)?;
        let old_norm = window_norm(&old)?;
        let (row2, col2) = (random_offset(h - s, device)?, random_offset(w - s, device)?);
        let mask = |r: i64, q: i64| -> Result<Tensor, PluginError> {
            let mut m = Tensor::f_zeros([1, 1, h, w], (Kind::Float, device))?;
            let _ = window(&m, r, q, s)?.f_fill_(1.0)?;
            m = m.f_expand([1, c, h, w], false)?;
            Ok(m)
        };
        let both = mask(row, col)?.f_maximum(&mask(row2, col2)?)?;
        let image_norm = per_sample_l2(&delta)?;
        let windows_norm = per_sample_l2(&delta.f_mul(&both)?)?;
        let fresh = eta(s as usize, device)?
            .f_reshape([1, 1, s, s])?
            .f_mul(&random_signs(&[m, c, 1, 1], device)?)?;
        let merged = fresh.f_add(&old.f_div(&old_norm.f_add_scalar(1e-12)?)?)?;
        let budget = image_norm
            .f_square()?
            .f_neg()?
            .f_add_scalar(eps * eps)?
            .f_clamp_min(0.0)?
            .f_div_scalar(c as f64)?
            .f_add(&windows_norm.f_square()?)?
            .f_sqrt()?;
        let new = merged
            .f_div(&window_norm(&merged)?.f_add_scalar(1e-12)?)?
            .f_mul(&budget)?;
        let next = delta.f_detach_copy()?;
        let _ = window(&next, row2, col2, s)?.f_zero_()?;
        window(&next, row, col, s)?.f_copy_(&new)?;
        Ok(x.f_add(&unit_l2(&next)?.f_mul_scalar(eps)?)?
            .f_clamp(0.0, 1.0)?)
    }

    /// One run on `x`: the lowest-margin points found and their margins.
    fn run(
        &self,
        x: &Tensor,
        labels: &Tensor,
        oracle: Oracle<'_, '_>,
    ) -> Result<(Tensor, Tensor), PluginError> {
        let c = &self.config;
        let l2 = Norm::from(c.norm) == Norm::L2;
        let mut best = if l2 {
            self.l2_start(x)?
        } else {
            self.linf_start(x)?
        };
        let mut best_margin = margin(oracle, &best, labels)?;
        let dims = x.dim();
        for i in 0..c.queries {
            let index = best_margin.f_gt(0.0)?.f_nonzero()?.f_flatten(0, -1)?;
            if index.numel() == 0 {
                break;
            }
            let (xi, bi) = (
                x.f_index_select(0, &index)?,
                best.f_index_select(0, &index)?,
            );
            let p = p_selection(c.p_init, i, c.queries);
            let proposal = if l2 {
                self.l2_proposal(&xi, &bi, p)?
            } else {
                self.linf_proposal(&xi, &bi, p)?
            };
            let current = best_margin.f_index_select(0, &index)?;
            let candidate = margin(oracle, &proposal, &labels.f_index_select(0, &index)?)?;
            let better = candidate.f_lt_tensor(&current)?;
            let mut shape = vec![-1i64];
            shape.extend(std::iter::repeat_n(1, dims - 1));
            let rows = proposal.f_where_self(&better.f_reshape(shape)?, &bi)?;
            best = best.f_index_copy(0, &index, &rows)?;
            best_margin =
                best_margin.f_index_copy(0, &index, &candidate.f_where_self(&better, &current)?)?;
        }
        Ok((best, best_margin))
    }
}

impl Attack for Square {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: self.config.norm.into(),
            epsilon: self.config.epsilon.0,
            steps: self.config.queries,
        }
    }

    /// Points misclassified on the clean input are returned unchanged; each run attacks
    /// the points no earlier run broke; per sample the lowest-margin point is kept.
    fn perturb(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        if let Some(seed) = self.config.seed {
            tch::manual_seed(seed as i64);
        }
        let (x, labels) = (batch.images(), batch.labels());
        let x = x.f_to_kind(Kind::Float)?;
        let mut result = x.f_detach_copy()?;
        let mut best_margin = margin(oracle, &x, &labels)?;
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, x.dim() - 1));
        for _ in 0..self.config.restarts {
            let index = best_margin.f_gt(0.0)?.f_nonzero()?.f_flatten(0, -1)?;
            if index.numel() == 0 {
                break;
            }
            let y = labels.f_index_select(0, &index)?;
            let (adv, adv_margin) = self.run(&x.f_index_select(0, &index)?, &y, oracle)?;
            let old = best_margin.f_index_select(0, &index)?;
            let take = adv_margin.f_lt_tensor(&old)?;
            let rows = adv.f_where_self(
                &take.f_reshape(shape.as_slice())?,
                &result.f_index_select(0, &index)?,
            )?;
            result = result.f_index_copy(0, &index, &rows)?;
            best_margin =
                best_margin.f_index_copy(0, &index, &adv_margin.f_where_self(&take, &old)?)?;
        }
        Ok(result)
    }
}

sat_core::register_attack!(
    Square,
    name = "square",
    description = "Square Attack (AutoAttack): score-based random search on the margin, linf or l2, logits only",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, OracleAdapter, Phase};

    /// A linear model on `[24, 3, side, side]` images labelled with its clean predictions.
    fn setup(side: i64, seed: i64) -> (OracleAdapter<LinearModel>, Tensor, Tensor) {
        let adapter = LinearModel::random(5, 3 * side * side, seed).oracle();
        tch::manual_seed(3);
        let x = Tensor::rand([24, 3, side, side], (Kind::Float, Device::Cpu));
        let y = {
            let oracle_ref = adapter.as_ref();
            Oracle::new(&oracle_ref)
                .logits(&x)
                .unwrap()
                .argmax(-1, false)
        };
        (adapter, x, y)
    }

    use crate::tests::accuracy;

    #[test]
    fn the_p_schedule_is_rescaled_to_the_budget() {
        let _generator = crate::tests::generator();
        assert_eq!(p_selection(0.8, 0, 5000), 0.8);
        assert_eq!(p_selection(0.8, 5, 5000), 0.8, "iteration 10 of 10 000");
        assert_eq!(p_selection(0.8, 6, 5000), 0.4);
        assert_eq!(p_selection(0.8, 2500, 5000), 0.8 / 128.0);
        assert_eq!(p_selection(0.8, 4999, 5000), 0.8 / 512.0);
        assert_eq!(p_selection(0.8, 50, 100), 0.8 / 128.0);
    }

    #[test]
    fn eta_has_unit_norm_and_opposite_halves() {
        let _generator = crate::tests::generator();
        for s in [1usize, 3, 4, 6] {
            let e = eta(s, Device::Cpu).unwrap();
            assert_eq!(e.size(), vec![s as i64, s as i64]);
            let norm = e.square().sum(Kind::Float).sqrt().double_value(&[]);
            assert!((norm - 1.0).abs() < 1e-5, "s = {s}: {norm}");
            assert!(e.min().double_value(&[]) < 0.0, "s = {s}: a negative half");
            if s % 2 == 0 {
                assert!(e.sum(Kind::Float).double_value(&[]).abs() < 1e-5, "s = {s}");
            }
        }
        // The innermost rectangle carries the largest weight.
        let r = eta_rectangles(3, 3);
        assert!(r[4] > r[0] && (r[0] - r[8]).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn linf_and_l2_stay_in_ball_and_box_are_deterministic_and_lower_accuracy() {
        let _generator = crate::tests::generator();
        for (norm, eps, side) in [("linf", 0.05, 4), ("l2", 1.0, 8)] {
            let (adapter, x, y) = setup(side, 17);
            let oracle_ref = adapter.as_ref();
            let oracle = Oracle::new(&oracle_ref);
            let before = x.copy();
            let batch = Batch::new(&x, &y, 0, 1, Phase::Evaluation);
            let text = format!("norm = \"{norm}\"\nepsilon = {eps}\nqueries = 100");
            let mut square =
                Square::from_config(sat_core::parse_config("square", &text).unwrap()).unwrap();
            tch::manual_seed(4);
            let adv = square.perturb(&batch, oracle).unwrap();
            let delta = &adv - &x;
            let size = if norm == "linf" {
                delta.abs().max()
            } else {
                per_sample_l2(&delta).unwrap().max()
            }
            .double_value(&[]);
            assert!(size <= eps + 1e-5, "{norm}: outside the ball: {size}");
            assert!(adv.min().double_value(&[]) >= 0.0 && adv.max().double_value(&[]) <= 1.0);
            assert!(x.equal(&before), "{norm}: input unchanged");
            assert_eq!(adv.kind(), Kind::Float);
            let a = accuracy(oracle, &adv, &y);
            assert!(a < 0.8, "{norm}: accuracy {a} should drop from 1");
            tch::manual_seed(4);
            let again = square.perturb(&batch, oracle).unwrap();
            assert!(adv.equal(&again), "{norm}: deterministic under manual_seed");
            assert_eq!(square.threat_model().steps, 100);
        }
    }

    #[test]
    fn misclassified_points_are_left_alone_and_more_queries_do_not_hurt() {
        let _generator = crate::tests::generator();
        let (adapter, x, y) = setup(4, 5);
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        // Half the labels wrong: those points are already misclassified.
        let wrong = y.copy();
        let _ = wrong.narrow(0, 0, 12).g_add_scalar_(1).remainder_(5);
        let batch = Batch::new(&x, &wrong, 0, 1, Phase::Evaluation);
        let mut accuracies = Vec::new();
        for queries in [10, 80] {
            let text = format!("epsilon = 0.03\nqueries = {queries}");
            let mut square =
                Square::from_config(sat_core::parse_config("square", &text).unwrap()).unwrap();
            tch::manual_seed(6);
            let adv = square.perturb(&batch, oracle).unwrap();
            assert!(
                adv.narrow(0, 0, 12).equal(&x.narrow(0, 0, 12)),
                "misclassified: clean"
            );
            accuracies.push(accuracy(
                oracle,
                &adv.narrow(0, 12, 12),
                &y.narrow(0, 12, 12),
            ));
        }
        assert!(
            accuracies[0] > 0.0,
            "a budget that leaves points: {accuracies:?}"
        );
        assert!(accuracies[1] <= accuracies[0], "{accuracies:?}");
    }

    #[test]
    fn bad_keys_are_config_errors() {
        let _generator = crate::tests::generator();
        for (text, key) in [
            ("queries = 0", "queries"),
            ("restarts = 0", "restarts"),
            ("p_init = 1.5", "p_init"),
        ] {
            let e = Square::from_config(sat_core::parse_config("square", text).unwrap())
                .err()
                .unwrap_or_else(|| panic!("`{text}` must be rejected"));
            assert!(e.message.contains(key), "{e}");
        }
        assert!(sat_core::parse_config::<SquareConfig>("square", "norm = \"l1\"").is_err());
    }
}
