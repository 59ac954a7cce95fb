//! The standard attacks of `sat`, as one plugin library.
//!
//! All attacks work in `[0, 1]` pixel space, never modify their input, and return points
//! inside the ε-ball and `[0, 1]` (the iterative ones project after every step; the
//! minimum-norm ones, FAB and CW-L2, return the clean image where they found nothing
//! within ε). Randomness comes from libtorch's
//! global generator, which the host seeds from the run's seed.

pub mod apgd;
pub mod autoattack;
pub mod ball;
pub mod cw;
pub mod fab;
pub mod fgsm;
pub mod noise;
pub mod pgd;
pub mod ranges;
pub mod sat;
pub mod square;
pub mod trades;

sat_core::export_plugin!();

#[cfg(test)]
mod tests {
    use sat_core::{testing::LinearModel, Oracle, OracleAdapter};
    use tch::{Device, Kind, Tensor};

    /// Accuracy of the oracle's model on `x` against the labels `y`.
    pub(crate) fn accuracy(oracle: Oracle<'_, '_>, x: &Tensor, y: &Tensor) -> f64 {
        oracle
            .logits(x)
            .unwrap()
            .argmax(-1, false)
            .eq_tensor(y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }

    /// A 5-class linear model and 24 images labelled with its own predictions.
    pub(crate) fn multiclass() -> (OracleAdapter<LinearModel>, Tensor, Tensor) {
        let adapter = LinearModel::random(5, 48, 23).oracle();
        tch::manual_seed(6);
        let x = Tensor::rand([24, 3, 4, 4], (Kind::Float, Device::Cpu));
        let y = adapter.0.forward(&x).unwrap().argmax(-1, false);
        (adapter, x, y)
    }
    /// Serialises the tests: they seed libtorch's process-wide generator (directly or
    /// through `LinearModel::random`), and tests run in parallel threads.
    pub(crate) fn generator() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn every_component_builds_from_its_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(14));
    }
}
