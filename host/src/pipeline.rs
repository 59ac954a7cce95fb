//! How a run combines its plugins: saliency sources (one drawn per batch) feeding an
//! attack that makes the model's inputs.
use crate::component::{AttackComponent, ComponentError, Origin, SaliencyComponent};
use crate::config::RunConfig;
use crate::data::{rng::SplitMix, Samples};
use crate::registry::{Registry, RegistryError};
use sat_core::{ComponentKind, Epsilon, OracleRef, Phase};
use tch::Tensor;

/// The component table for `name` from the config (empty if absent).
fn table(config: &RunConfig, name: &str) -> toml::Table {
    config.components.get(name).cloned().unwrap_or_default()
}

fn origin(registry: &Registry, name: &str, kind: ComponentKind) -> Result<Origin, RegistryError> {
    let entry = registry.find(name, kind)?;
    Ok(Origin { name: name.to_owned(), library: registry.library(entry).path.clone() })
}

/// Creates the saliency source `name` with its `[components.<name>]` table.
pub fn create_saliency(registry: &Registry, config: &RunConfig, name: &str) -> Result<SaliencyComponent, RegistryError> {
    let origin = origin(registry, name, ComponentKind::Saliency)?;
    Ok(SaliencyComponent::new(origin, registry.create_saliency(name, &table(config, name))?))
}

/// Creates the attack `name` with its table, its `epsilon` replaced by `epsilon` if given.
pub fn create_attack(
    registry: &Registry,
    config: &RunConfig,
    name: &str,
    epsilon: Option<Epsilon>,
) -> Result<AttackComponent, RegistryError> {
    let origin = origin(registry, name, ComponentKind::Attack)?;
    let mut table = table(config, name);
    if let Some(eps) = epsilon {
        let entry = registry.find(name, ComponentKind::Attack)?;
        if !entry.info.default_config.contains("epsilon") {
            return Err(RegistryError::Rejected {
                component: format!("attack `{name}`"),
                library: origin.library,
                message: "it has no `epsilon` key, so it cannot be evaluated at other budgets".into(),
            });
        }
        table.insert("epsilon".into(), toml::Value::Float(eps.0));
    }
    Ok(AttackComponent::new(origin, registry.create_attack(name, &table)?))
}

/// Saliency sources and an optional attack.
pub struct Pipeline {
    /// Saliency sources.
    pub sources: Vec<SaliencyComponent>,
    /// Cumulative drawing weights of the sources, ending at 1.
    cumulative: Vec<f64>,
    /// The attack (none = clean inputs).
    pub attack: Option<AttackComponent>,
}

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Loading or creating a component failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The components do not fit together.
    #[error("{0}")]
    Mismatch(String),
}

impl Pipeline {
    /// The training pipeline of `config` (`[train] saliency`, `saliency_weights`, `attack`).
    pub fn for_training(registry: &Registry, config: &RunConfig) -> Result<Self, PipelineError> {
        let attack = match config.train.attack.as_str() {
            "" => None,
            name => Some(create_attack(registry, config, name, None)?),
        };
        Self::new(registry, config, attack)
    }

    /// The saliency sources of `config` with `attack`.
    pub fn new(registry: &Registry, config: &RunConfig, attack: Option<AttackComponent>) -> Result<Self, PipelineError> {
        let train = &config.train;
        let sources =
            train.saliency.iter().map(|n| create_saliency(registry, config, n)).collect::<Result<Vec<_>, _>>()?;
        let weights = if train.saliency_weights.is_empty() {
            vec![1.0; sources.len()]
        } else {
            train.saliency_weights.clone()
        };
        if weights.len() != sources.len() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(PipelineError::Mismatch(format!(
                "[train] saliency_weights must hold one non-negative weight per saliency source ({} sources, got {:?})",
                sources.len(),
                weights
            )));
        }
        let total: f64 = weights.iter().sum();
        if !sources.is_empty() && total <= 0.0 {
            return Err(PipelineError::Mismatch("[train] saliency_weights sum to zero".into()));
        }
        let cumulative = weights.iter().scan(0.0, |acc, w| { *acc += w / total; Some(*acc) }).collect();
        if let Some(a) = &attack {
            if a.requires_saliency && sources.is_empty() {
                return Err(PipelineError::Mismatch(format!(
                    "attack `{}` needs saliency maps, but no saliency source is configured \
                     (add `--plugin masks` or set [train] saliency = [\"masks\"])",
                    a.origin.name
                )));
            }
        }
        Ok(Self { sources, cumulative, attack })
    }

    /// Whether the attack will ask for saliency.
    pub fn uses_saliency(&self) -> bool {
        self.attack.as_ref().is_some_and(|a| a.requires_saliency)
    }

    /// Draws a source index.
    fn draw(&self, rng: &mut SplitMix) -> usize {
        let u = rng.uniform();
        self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1)
    }

    /// The model's inputs for `samples`: the attack's output, or the images themselves.
    pub fn inputs(
        &mut self,
        samples: &Samples,
        epoch: u32,
        epochs: u32,
        phase: Phase,
        oracle: &OracleRef<'_>,
        rng: &mut SplitMix,
    ) -> Result<Tensor, ComponentError> {
        if self.attack.is_none() {
            return Ok(samples.images.shallow_clone());
        }
        let mut batch = samples.batch(epoch, epochs, phase);
        if self.uses_saliency() {
            let index = self.draw(rng);
            let map = self.sources[index].saliency(&batch, oracle)?;
            batch = batch.with_saliency(&map);
        }
        self.attack.as_mut().expect("checked above").perturb(&batch, oracle)
    }
}
