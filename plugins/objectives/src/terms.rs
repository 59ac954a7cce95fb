//! Terms and checks shared by the objectives.
use sat_core::{objective_value, Objective, PluginError};
use tch::Tensor;

/// The batch mean of the per-sample cross-entropy of `logits` against `labels`.
pub(crate) fn mean_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, PluginError> {
    let per_sample = objective_value(logits, &Objective::cross_entropy(labels))?;
    Ok(per_sample.f_mean(logits.kind())?)
}

/// The batch mean of the per-sample squared ℓ2 norm over every dimension but the first.
pub(crate) fn mean_squared_norm(t: &Tensor) -> Result<Tensor, PluginError> {
    let per_sample = t
        .f_flatten(1, -1)?
        .f_square()?
        .f_sum_dim_intlist(-1, false, t.kind())?;
    Ok(per_sample.f_mean(t.kind())?)
}

/// `value` if it is a finite non-negative weight, else a config error naming
/// `[component] key`.
pub(crate) fn weight(component: &str, key: &str, value: f64) -> Result<f64, PluginError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(PluginError::config(format!(
            "[{component}] {key} must be finite and >= 0, got {value}"
        )))
    }
}
