//! The standard training objectives of `sat`, as one plugin library.
//!
//! | name | loss |
//! |---|---|
//! | `ce` | `CE(f(x'), y)`, optional label smoothing |
//! | `trades` | `CE(f(x), y) + β·KL(f(x) ‖ f(x'))` |
//! | `rrr` | `CE(f(x'), y) + λ·‖(1 − A) ⊙ ∇ₓ Σₖ log pₖ(x')‖²` (Right for the Right Reasons) |
//! | `input-gradient` | `CE(f(x'), y) + λ·‖∇ₓ CE(x')‖²` (double backpropagation) |
//! | `gradalign` | `CE(f(x'), y) + λ·(1 − cos(∇ₓℓ(x), ∇ₓℓ(x + η)))` |
//!
//! `x` is the clean batch, `x'` the model's inputs (the attack's output, or `x` itself),
//! `A` the saliency map mapped to `[0, 1]`; norms are per sample over `C·H·W` and every
//! term is a mean over the batch. Objectives follow the inputs' dtype, never modify the
//! batch or the inputs, and draw randomness (GradAlign's η) from libtorch's generator,
//! which the host seeds.

pub mod ce;
pub mod gradalign;
pub mod input_gradient;
pub mod rrr;
mod terms;
pub mod trades;

#[cfg(test)]
mod test_support;

sat_core::export_plugin!();

#[cfg(test)]
mod tests {
    #[test]
    fn every_component_builds_from_its_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(5));
    }
}
