//! The standard attacks of `sat`, as one plugin library.
//!
//! All attacks work in `[0, 1]` pixel space, never modify their input, and project onto
//! the ε-ball and clamp to `[0, 1]` after every step. Randomness comes from libtorch's
//! global generator, which the host seeds from the run's seed.

pub mod apgd;
pub mod ball;
pub mod cw;
pub mod fab;
pub mod fgsm;
pub mod noise;
pub mod pgd;
pub mod sat;
pub mod square;
pub mod trades;

sat_core::export_plugin!();

#[cfg(test)]
mod tests {
    #[test]
    fn every_component_builds_from_its_defaults() {
        assert_eq!(sat_core::check_registrations(), Ok(10));
    }
}
