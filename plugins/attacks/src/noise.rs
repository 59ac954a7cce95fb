//! Uniform noise in the ε-ball: the baseline SAT is compared against.
use crate::ball::random_start;
use sat_core::{
    component::Configurable, Attack, Batch, Epsilon, Norm, Oracle, PluginError, ThreatModel,
};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Configuration of `noise`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseConfig {
    /// Budget (ℓ∞).
    pub epsilon: Epsilon,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self {
            epsilon: Epsilon(8.0 / 255.0),
        }
    }
}

/// `clip(x + U(−ε, ε))`, no gradient.
pub struct Noise {
    config: NoiseConfig,
}

impl Configurable for Noise {
    type Config = NoiseConfig;
    fn from_config(config: NoiseConfig) -> Result<Self, PluginError> {
        Ok(Self { config })
    }
}

impl Attack for Noise {
    fn threat_model(&self) -> ThreatModel {
        ThreatModel {
            norm: Norm::Linf,
            epsilon: self.config.epsilon.0,
            steps: 0,
        }
    }
    fn perturb(&mut self, batch: &Batch, _oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        random_start(
            batch.draws(),
            "noise",
            &batch.images(),
            Norm::Linf,
            self.config.epsilon.0,
        )
    }
}

sat_core::register_attack!(
    Noise,
    name = "noise",
    description = "Uniform noise U(-epsilon, epsilon), no gradient (the paper's baseline)",
);
