//! Projections onto the perturbation budget and the `[0, 1]` image box.
use sat_core::{Draws, Norm, PluginError};
use tch::Tensor;

/// Projects `x` onto the `norm`-ball of radius `epsilon` around `origin`, then onto
/// `[0, 1]`.
pub fn project(
    x: &Tensor,
    origin: &Tensor,
    norm: Norm,
    epsilon: f64,
) -> Result<Tensor, PluginError> {
    into_ball(x.f_sub(origin)?, origin, norm, epsilon)
}

/// [`project`] of a point the caller owns (a fresh tensor that nothing else refers to),
/// computed in its storage: the same operations on the same values, so the same result
/// bit for bit, without a new tensor per operation.
pub fn project_owned(
    mut x: Tensor,
    origin: &Tensor,
    norm: Norm,
    epsilon: f64,
) -> Result<Tensor, PluginError> {
    let _ = x.f_sub_(origin)?;
    into_ball(x, origin, norm, epsilon)
}

/// `project(point + step_size · direction, origin)`, computed in the storage of
/// `direction`, which the caller owns (a fresh tensor, such as [`ascent_direction`]'s):
/// the same result bit for bit as the expression (addition commutes exactly).
pub fn step_and_project(
    mut direction: Tensor,
    step_size: f64,
    point: &Tensor,
    origin: &Tensor,
    (norm, epsilon): (Norm, f64),
) -> Result<Tensor, PluginError> {
    let _ = direction.f_mul_scalar_(step_size)?;
    let _ = direction.f_add_(point)?;
    project_owned(direction, origin, norm, epsilon)
}

/// `origin + delta` with `delta` cut to the ball, then clamped to `[0, 1]`, in `delta`'s
/// storage.
fn into_ball(
    mut delta: Tensor,
    origin: &Tensor,
    norm: Norm,
    epsilon: f64,
) -> Result<Tensor, PluginError> {
    match norm {
        Norm::Linf => {
            let _ = delta.f_clamp_(-epsilon, epsilon)?;
        }
        Norm::L2 => {
            let norms = per_sample_l2(&delta)?;
            let factor = norms
                .f_clamp_min(1e-12)?
                .f_reciprocal()?
                .f_mul_scalar(epsilon)?
                .f_clamp_max(1.0)?;
            let _ = delta.f_mul_(&factor)?;
        }
    }
    let _ = delta.f_add_(origin)?;
    let _ = delta.f_clamp_(0.0, 1.0)?;
    Ok(delta)
}

/// ℓ2 norm of each sample, shaped `[N, 1, 1, 1]` (broadcastable over the sample).
pub fn per_sample_l2(t: &Tensor) -> Result<Tensor, PluginError> {
    let n = t.size()[0];
    let norms = t
        .f_reshape([n, -1])?
        .f_norm_scalaropt_dim(2, [1i64].as_slice(), false)?;
    let mut shape = vec![n];
    shape.extend(std::iter::repeat_n(1, t.dim() - 1));
    Ok(norms.f_reshape(shape)?)
}

/// The steepest-ascent direction for `norm`: `sign(g)` for ℓ∞, `g / ‖g‖₂` for ℓ2.
pub fn ascent_direction(gradient: &Tensor, norm: Norm) -> Result<Tensor, PluginError> {
    Ok(match norm {
        Norm::Linf => gradient.f_sign()?,
        Norm::L2 => gradient.f_div(&per_sample_l2(gradient)?.f_clamp_min(1e-12)?)?,
    })
}

/// A random start inside the ball: uniform per element for ℓ∞; for ℓ2 a uniformly
/// random direction with a radius uniform in `[0, ε]`. Drawn from `draws` (keyed by
/// sample when the host keys them) under `purpose`.
pub fn random_start(
    draws: Draws<'_>,
    purpose: &str,
    images: &Tensor,
    norm: Norm,
    epsilon: f64,
) -> Result<Tensor, PluginError> {
    // Each step in the storage of the fresh draw (the same values as out of place).
    let mut start = match norm {
        Norm::Linf => {
            let mut u = draws.uniform_like(purpose, images)?;
            let _ = u.f_mul_scalar_(2.0 * epsilon)?;
            let _ = u.f_sub_scalar_(epsilon)?;
            u
        }
        Norm::L2 => {
            let direction = draws.normal_like(&format!("{purpose}.direction"), images)?;
            let mut unit = direction.f_div(&per_sample_l2(&direction)?.f_clamp_min(1e-12)?)?;
            let radius = draws
                .uniform_like(&format!("{purpose}.radius"), &per_sample_l2(images)?)?
                .f_mul_scalar(epsilon)?;
            let _ = unit.f_mul_(&radius)?;
            unit
        }
    };
    let _ = start.f_add_(images)?;
    let _ = start.f_clamp_(0.0, 1.0)?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn projection_respects_ball_and_box() {
        let _generator = crate::tests::generator();
        tch::manual_seed(1);
        let origin = Tensor::rand([4, 3, 5, 5], (Kind::Float, Device::Cpu));
        let far = &origin + Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu));
        let eps = 8.0 / 255.0;
        let p = project(&far, &origin, Norm::Linf, eps).unwrap();
        assert!((&p - &origin).abs().max().double_value(&[]) <= eps + 1e-6);
        assert!(p.min().double_value(&[]) >= 0.0 && p.max().double_value(&[]) <= 1.0);
        let p2 = project(&far, &origin, Norm::L2, 0.5).unwrap();
        let norms = per_sample_l2(&(&p2 - &origin)).unwrap();
        assert!(norms.max().double_value(&[]) <= 0.5 + 1e-5);
        // A point already inside is left alone.
        let inside = project(&origin, &origin, Norm::L2, 0.5).unwrap();
        assert!(inside.equal(&origin));
    }
}
