//! FAB's projection onto a linearised decision boundary inside the `[0, 1]` box: for
//! each row `t` of a batch, the smallest step `d` (in ℓ∞ or ℓ2) with `w·(t + d) = b` and
//! `t + d ∈ [0, 1]`, or, where the box does not reach the hyperplane, the step to the
//! box corner closest to it. Ports of `projection_linf` and `projection_l2` of
//! fra31/auto-attack (as in torchattacks 3.5.1), batched with masks instead of row
//! selections; every row is independent.
use sat_core::{Norm, PluginError};
use tch::{Kind, Tensor};

/// The step `[M, D]` from each row of `points` `[M, D]` onto its hyperplane
/// `w_m·x = b_m` (`w` `[M, D]`, `b` `[M]`), minimal in `norm`, within `[0, 1]`.
pub fn onto_hyperplane(
    points: &Tensor,
    w: &Tensor,
    b: &Tensor,
    norm: Norm,
) -> Result<Tensor, PluginError> {
    match norm {
        Norm::Linf => linf(points, w, b),
        Norm::L2 => l2(points, w, b),
    }
}

/// Per-row sum of a `[M, D]` tensor.
fn row_sum(t: &Tensor) -> Result<Tensor, PluginError> {
    Ok(t.f_sum_dim_intlist(1, false, Kind::Float)?)
}

/// `+1` where `v ≥ 0`, else `−1`.
fn sign_of(v: &Tensor) -> Result<Tensor, PluginError> {
    Ok(v.f_ge(0.0)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?)
}

/// `column[m, index[m]]` for an int64 `index` `[M, 1]`, as `[M]`.
fn pick(column: &Tensor, index: &Tensor) -> Result<Tensor, PluginError> {
    Ok(column.f_gather(1, index, false)?.f_squeeze_dim(1)?)
}

/// Per row, the largest `i ∈ [0, D − 1)` for which `above(i)` holds, by bisection over
/// `⌈log₂ D⌉` rounds (the caller guarantees monotonicity on the rows it uses).
fn bisect(
    rows: i64,
    dim: i64,
    device: tch::Device,
    above: impl Fn(&Tensor) -> Result<Tensor, PluginError>,
) -> Result<Tensor, PluginError> {
    let mut lb = Tensor::f_zeros([rows], (Kind::Float, device))?;
    let mut ub = Tensor::f_full([rows], (dim - 1) as f64, (Kind::Float, device))?;
    let rounds = (dim.max(1) as f64).log2().ceil() as u32;
    for _ in 0..rounds {
        let middle = lb.f_add(&ub)?.f_div_scalar(2.0)?.f_floor()?;
        let index = middle.f_to_kind(Kind::Int64)?.f_unsqueeze(1)?;
        let c = above(&index)?;
        lb = middle.f_where_self(&c, &lb)?;
        ub = ub.f_where_self(&c, &middle)?;
    }
    Ok(lb.f_to_kind(Kind::Int64)?.f_unsqueeze(1)?)
}

/// `projection_linf`.
fn linf(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor, PluginError> {
    let (rows, dim) = (t.size()[0], t.size()[1]);
    let sign = sign_of(&row_sum(&w.f_mul(t)?)?.f_sub(b)?)?;
    let w = w.f_mul(&sign.f_unsqueeze(1)?)?;
    let b = b.f_mul(&sign)?;
    let nonzero = w.f_ne(0.0)?.f_to_kind(Kind::Float)?;
    let a = w.f_lt(0.0)?.f_to_kind(Kind::Float)?;
    let two_a_minus_one = a.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
    let d = a.f_sub(t)?.f_mul(&nonzero)?;
    let p = a.f_sub(&t.f_mul(&two_a_minus_one)?)?;
    let indp = p.f_argsort(1, false)?;
    let b = b.f_sub(&row_sum(&w.f_mul(t)?)?)?;
    let b0 = row_sum(&w.f_mul(&d)?)?;
    let indp2 = indp.f_flip([1i64].as_slice())?;
    let ws = w.f_gather(1, &indp2, false)?;
    let bs2 = ws.f_neg()?.f_mul(&d.f_gather(1, &indp2, false)?)?;
    let s = ws.f_abs()?.f_cumsum(1, Kind::Float)?;
    let sb = bs2.f_cumsum(1, Kind::Float)?.f_add(&b0.f_unsqueeze(1)?)?;
    let (s_last, sb_last) = (s.f_select(1, dim - 1)?, sb.f_select(1, dim - 1)?);
    let p_smallest = pick(&p, &indp.f_narrow(1, 0, 1)?)?;
    let b2 = sb_last.f_sub(&s_last.f_mul(&p_smallest)?)?;
    let c_l = b.f_sub(&b2)?.f_gt(0.0)?;
    let c2 = b
        .f_sub(&b0)?
        .f_gt(0.0)?
        .f_logical_and(&c_l.f_logical_not()?)?;
    let lb = bisect(rows, dim, t.device(), |index| {
        let current = indp.f_gather(1, &index.f_neg()?.f_add_scalar(dim - 1)?, false)?;
        let b2 = pick(&sb, index)?.f_sub(&pick(&s, index)?.f_mul(&pick(&p, &current)?)?)?;
        Ok(b.f_sub(&b2)?.f_gt(0.0)?)
    })?;
    // Rows whose hyperplane lies beyond every partial step: move all coordinates.
    let lambda_l = b
        .f_sub(&sb_last)?
        .f_div(&s_last.f_neg()?)?
        .f_clamp_min(0.0)?
        .f_unsqueeze(1)?;
    let d_l = two_a_minus_one.f_mul(&lambda_l)?;
    // Rows with a partial solution: clip the coordinates at the bisected λ.
    let lambda_2 = b
        .f_sub(&pick(&sb, &lb)?)?
        .f_div(&pick(&s, &lb)?.f_neg()?)?
        .f_clamp_min(0.0)?
        .f_unsqueeze(1)?;
    let d_2 = lambda_2.f_minimum(&d)?.f_mul(&a)?.f_add(
        &lambda_2
            .f_neg()?
            .f_maximum(&d)?
            .f_mul(&a.f_neg()?.f_add_scalar(1.0)?)?,
    )?;
    let d = d_l.f_where_self(
        &c_l.f_unsqueeze(1)?,
        &d_2.f_where_self(&c2.f_unsqueeze(1)?, &d)?,
    )?;
    Ok(d.f_mul(&nonzero)?)
}

/// `projection_l2`.
fn l2(t: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor, PluginError> {
    let (rows, dim) = (t.size()[0], t.size()[1]);
    let c = row_sum(&w.f_mul(t)?)?.f_sub(b)?;
    let sign = sign_of(&c)?;
    let w = w.f_mul(&sign.f_unsqueeze(1)?)?;
    let c = c.f_mul(&sign)?;
    let usable = w.f_abs()?.f_gt(1e-8)?;
    let r = t
        .f_div(&w)?
        .f_maximum(&t.f_sub_scalar(1.0)?.f_div(&w)?)?
        .f_clamp(-1e12, 1e12)?
        .f_masked_fill(&usable.f_logical_not()?, 1e12)?;
    let r = r.f_masked_fill(&r.f_eq(-1e12)?, 1e12)?;
    let (rs, indr) = r.f_sort(1, false)?;
    let zero_column = Tensor::f_zeros([rows, 1], (Kind::Float, t.device()))?;
    let rs2 = Tensor::f_cat(&[rs.f_narrow(1, 1, dim - 1)?, zero_column], 1)?;
    let rs = rs.f_masked_fill(&rs.f_eq(1e12)?, 0.0)?;
    let rs2 = rs2.f_masked_fill(&rs2.f_eq(1e12)?, 0.0)?;
    let w3s = w.f_mul(&w)?.f_gather(1, &indr, false)?;
    let w5 = w3s.f_sum_dim_intlist(1, true, Kind::Float)?;
    let ws = w5.f_sub(&w3s.f_cumsum(1, Kind::Float)?)?;
    let d = r
        .f_mul(&w)?
        .f_neg()?
        .f_mul(&usable.f_to_kind(Kind::Float)?)?;
    let first = w5.f_mul(&rs.f_narrow(1, 0, 1)?)?;
    let s = Tensor::f_cat(
        &[
            first.f_neg()?,
            rs.f_sub(&rs2)?
                .f_mul(&ws)?
                .f_cumsum(1, Kind::Float)?
                .f_sub(&first)?,
        ],
        1,
    )?;
    let c4 = s.f_select(1, 0)?.f_add(&c)?.f_lt(0.0)?;
    let c3 = row_sum(&d.f_mul(&w)?)?.f_add(&c)?.f_gt(0.0)?;
    let c2 = c4.f_logical_or(&c3)?.f_logical_not()?;
    let lb = bisect(rows, dim, t.device(), |index| {
        Ok(pick(&s, index)?.f_add(&c)?.f_gt(0.0)?)
    })?;
    // Rows where the plain projection stays inside the box.
    let d_4 = c
        .f_div(&w5.f_squeeze_dim(1)?)?
        .f_unsqueeze(1)?
        .f_neg()?
        .f_mul(&w)?;
    // Rows where some coordinates hit the box: those stay clipped.
    let ws_lb = pick(&ws, &lb)?;
    let alpha = pick(&s, &lb)?
        .f_add(&c)?
        .f_div(&ws_lb)?
        .f_add(&pick(&rs, &lb)?)?
        .f_masked_fill(&ws_lb.f_eq(0.0)?, 0.0)?
        .f_unsqueeze(1)?;
    let c5 = alpha.f_gt_tensor(&r)?.f_to_kind(Kind::Float)?;
    let d_2 = d
        .f_mul(&c5)?
        .f_sub(&alpha.f_mul(&w)?.f_mul(&c5.f_neg()?.f_add_scalar(1.0)?)?)?;
    let d = d_4.f_where_self(
        &c4.f_unsqueeze(1)?,
        &d_2.f_where_self(&c2.f_unsqueeze(1)?, &d)?,
    )?;
    Ok(d.f_mul(&usable.f_to_kind(Kind::Float)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn row_norm(d: &Tensor, norm: Norm) -> Vec<f64> {
        let n = match norm {
            Norm::Linf => d.abs().amax([1i64].as_slice(), false),
            Norm::L2 => d.norm_scalaropt_dim(2, [1i64].as_slice(), false),
        };
        Vec::<f64>::try_from(&n.to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn reaches_the_hyperplane_with_the_closed_form_step_inside_the_box() {
        let _generator = crate::tests::generator();
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        // Points in the middle of the box, small offsets: the box is not binding.
        let t = Tensor::rand([5, 12], opts) * 0.2 + 0.4;
        let w = Tensor::randn([5, 12], opts);
        let b = (&w * &t).sum_dim_intlist(1, false, Kind::Float) + Tensor::randn([5], opts) * 0.1;
        let gap = ((&w * &t).sum_dim_intlist(1, false, Kind::Float) - &b).abs();
        for norm in [Norm::Linf, Norm::L2] {
            let d = onto_hyperplane(&t, &w, &b, norm).unwrap();
            let reached = (&w * (&t + &d)).sum_dim_intlist(1, false, Kind::Float) - &b;
            assert!(
                reached.abs().max().double_value(&[]) < 1e-4,
                "{norm:?} on the plane"
            );
            let dual = match norm {
                Norm::Linf => w.abs().sum_dim_intlist(1, false, Kind::Float),
                Norm::L2 => w.norm_scalaropt_dim(2, [1i64].as_slice(), false),
            };
            let expected = Vec::<f64>::try_from(&(&gap / dual).to_kind(Kind::Double)).unwrap();
            for (got, want) in row_norm(&d, norm).iter().zip(expected) {
                assert!((got - want).abs() < 1e-5, "{norm:?}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn respects_the_box_when_it_binds() {
        let _generator = crate::tests::generator();
        // One coordinate at the upper edge with the largest weight: the unconstrained
        // step would push it above 1, so the others must move instead.
        let t = Tensor::from_slice(&[1.0f32, 0.5, 0.5]).reshape([1, 3]);
        let w = Tensor::from_slice(&[4.0f32, 1.0, 1.0]).reshape([1, 3]);
        let b = Tensor::from_slice(&[5.5f32]); // w·t = 5, needs +0.5
        for norm in [Norm::Linf, Norm::L2] {
            let d = onto_hyperplane(&t, &w, &b, norm).unwrap();
            let x = &t + &d;
            assert!(x.min().double_value(&[]) >= -1e-6 && x.max().double_value(&[]) <= 1.0 + 1e-6);
            let reached = (&w * &x).sum(Kind::Float).double_value(&[]);
            assert!((reached - 5.5).abs() < 1e-5, "{norm:?}: {reached}");
            // The two free coordinates share the step: 0.25 each.
            assert!(
                (d.double_value(&[0, 1]) - 0.25).abs() < 1e-5,
                "{norm:?}: {d:?}"
            );
            assert!(d.double_value(&[0, 0]).abs() < 1e-6);
        }
    }
}
