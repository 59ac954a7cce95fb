//! How a run combines its plugins: a training mode is an attack (which makes the model's
//! inputs) × an objective (which turns them into a loss) × saliency sources (one drawn per
//! batch or per epoch, feeding whichever of the two asks for maps).
use super::component::{
    AttackComponent, Component, ComponentError, ComponentHandle, ObjectiveComponent, Origin,
    SaliencyComponent,
};
use super::registry::{Registry, RegistryError};
use crate::config::{RunConfig, SaliencyDraw};
use crate::data::{rng::SplitMix, Samples};
use sat_core::{AttackBox, ComponentKind, Epsilon, ObjectiveBox, OracleRef, Phase, SaliencyBox};
use tch::Tensor;

/// The component table for `name` from the config (empty if absent).
fn table(config: &RunConfig, name: &str) -> toml::Table {
    config.components.get(name).cloned().unwrap_or_default()
}

/// Why a component could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Finding or building it failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// It answered the host's first questions with an error.
    #[error(transparent)]
    Component(#[from] ComponentError),
}

/// Creates the component `name` of the kind of `B` from `table`.
pub fn create_with<B: ComponentHandle>(
    registry: &Registry,
    name: &str,
    table: &toml::Table,
) -> Result<Component<B>, CreateError>
where
    Component<B>: Wrap<B>,
{
    let entry = registry.find(name, B::KIND)?;
    let origin = Origin {
        name: name.to_owned(),
        library: registry.library(entry).path.clone(),
    };
    let made = registry.create(B::KIND, name, table)?;
    let handle = B::from_box(made).ok_or_else(|| RegistryError::Rejected {
        component: format!("{} `{name}`", B::KIND.noun()),
        library: origin.library.clone(),
        message: "the library built another kind of component".into(),
    })?;
    Ok(Component::<B>::wrap(origin, handle)?)
}

/// How each kind's [`Component`] is made from its handle (asking what it needs once).
pub trait Wrap<B>: Sized {
    /// Wraps `handle`.
    fn wrap(origin: Origin, handle: B) -> Result<Self, ComponentError>;
}

impl Wrap<SaliencyBox> for SaliencyComponent {
    fn wrap(origin: Origin, handle: SaliencyBox) -> Result<Self, ComponentError> {
        Self::new(origin, handle)
    }
}
impl Wrap<AttackBox> for AttackComponent {
    fn wrap(origin: Origin, handle: AttackBox) -> Result<Self, ComponentError> {
        Self::new(origin, handle)
    }
}
impl Wrap<ObjectiveBox> for ObjectiveComponent {
    fn wrap(origin: Origin, handle: ObjectiveBox) -> Result<Self, ComponentError> {
        Self::new(origin, handle)
    }
}

/// Creates the component `name` of the kind of `B` with its `[components.<name>]` table.
pub fn create<B: ComponentHandle>(
    registry: &Registry,
    config: &RunConfig,
    name: &str,
) -> Result<Component<B>, CreateError>
where
    Component<B>: Wrap<B>,
{
    create_with(registry, name, &table(config, name))
}

/// Creates the saliency source `name` with its `[components.<name>]` table.
pub fn create_saliency(
    registry: &Registry,
    config: &RunConfig,
    name: &str,
) -> Result<SaliencyComponent, CreateError> {
    create(registry, config, name)
}

/// Creates the attack `name` for training, with its `[components.<name>]` table.
pub fn create_attack(
    registry: &Registry,
    config: &RunConfig,
    name: &str,
) -> Result<AttackComponent, CreateError> {
    create(registry, config, name)
}

/// Creates the attack `name` for evaluation at budget `epsilon`: its
/// `[components.<name>]` table, overlaid with `[eval.components.<name>]`, `epsilon` set.
pub fn create_eval_attack(
    registry: &Registry,
    config: &RunConfig,
    name: &str,
    epsilon: Epsilon,
) -> Result<AttackComponent, CreateError> {
    let entry = registry.find(name, ComponentKind::Attack)?;
    if !entry.info.keys.iter().any(|k| k.as_str() == "epsilon") {
        return Err(RegistryError::Rejected {
            component: format!("attack `{name}`"),
            library: registry.library(entry).path.clone(),
            message: "it has no `epsilon` key, so it cannot be evaluated at other budgets".into(),
        }
        .into());
    }
    let mut table = table(config, name);
    if let Some(overlay) = config.eval.components.get(name) {
        table.extend(overlay.clone());
    }
    table.insert("epsilon".into(), toml::Value::Float(epsilon.0));
    create_with(registry, name, &table)
}

/// Saliency sources, an optional attack and an optional second attack mixed in per batch.
pub struct Pipeline {
    /// Saliency sources.
    pub sources: Vec<SaliencyComponent>,
    /// Cumulative drawing weights of the sources, ending at 1.
    cumulative: Vec<f64>,
    /// The attack (none = clean inputs).
    pub attack: Option<AttackComponent>,
    /// The second attack and the probability of using it on a batch.
    pub mix: Option<(AttackComponent, f64)>,
    /// With `[train] saliency_draw = "epoch"`: the seed of the per-epoch draw.
    per_epoch: Option<u64>,
    /// The training objective (training pipelines only).
    pub objective: Option<ObjectiveComponent>,
    /// The run's seed: with each sample's index it keys the sample's random draws in the
    /// components (`sat_core::draw`), so they do not depend on the batch or the rank.
    pub seed: u64,
}

/// The model's inputs for a batch, and the saliency maps drawn for it.
pub struct Inputs {
    /// The attack's output, or the clean images.
    pub images: Tensor,
    /// The maps of the source drawn for the batch, when the attack or the objective
    /// asked for them.
    pub saliency: Option<Tensor>,
    /// The attack's target classes `[N]`, when it is targeted.
    pub targets: Option<Tensor>,
}

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Loading or creating a component failed.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The components do not fit together.
    #[error("{0}")]
    Mismatch(String),
}

impl Pipeline {
    /// The training pipeline of `config` (`[train] saliency`, `saliency_weights`,
    /// `attack`, `mix`, `mix_probability`, `objective`).
    pub fn for_training(registry: &Registry, config: &RunConfig) -> Result<Self, PipelineError> {
        let t = &config.train;
        let attack = match t.attack.as_str() {
            "" => None,
            name => Some(create_attack(registry, config, name)?),
        };
        let mut pipeline = Self::new(registry, config, attack)?;
        let objective: ObjectiveComponent = create(registry, config, &t.objective)?;
        if objective.requires_saliency && pipeline.sources.is_empty() {
            return Err(PipelineError::Mismatch(format!(
                "objective `{}` needs saliency maps, but no saliency source is configured \
                 (add `--plugin masks` or set [train] saliency = [\"masks\"])",
                objective.origin.name
            )));
        }
        pipeline.objective = Some(objective);
        if !t.mix.is_empty() {
            if pipeline.attack.is_none() {
                return Err(PipelineError::Mismatch(format!(
                    "[train] mix = \"{}\" needs an attack to mix with ([train] attack)",
                    t.mix
                )));
            }
            if !(0.0..=1.0).contains(&t.mix_probability) {
                return Err(PipelineError::Mismatch(format!(
                    "[train] mix_probability must be in [0, 1], got {}",
                    t.mix_probability
                )));
            }
            let mix = create_attack(registry, config, &t.mix)?;
            pipeline.check_saliency(&mix)?;
            pipeline.mix = Some((mix, t.mix_probability));
        }
        Ok(pipeline)
    }

    fn check_saliency(&self, attack: &AttackComponent) -> Result<(), PipelineError> {
        if attack.requires_saliency && self.sources.is_empty() {
            return Err(PipelineError::Mismatch(format!(
                "attack `{}` needs saliency maps, but no saliency source is configured \
                 (add `--plugin masks` or set [train] saliency = [\"masks\"])",
                attack.origin.name
            )));
        }
        Ok(())
    }

    /// The saliency sources of `config` with `attack` (no mixing).
    pub fn new(
        registry: &Registry,
        config: &RunConfig,
        attack: Option<AttackComponent>,
    ) -> Result<Self, PipelineError> {
        let train = &config.train;
        let sources = train
            .saliency
            .iter()
            .map(|n| create_saliency(registry, config, n))
            .collect::<Result<Vec<_>, _>>()?;
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
            return Err(PipelineError::Mismatch(
                "[train] saliency_weights sum to zero".into(),
            ));
        }
        let cumulative = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        let pipeline = Self {
            sources,
            cumulative,
            attack,
            mix: None,
            per_epoch: (train.saliency_draw == SaliencyDraw::Epoch).then_some(config.seed),
            objective: None,
            seed: config.seed,
        };
        if let Some(a) = &pipeline.attack {
            pipeline.check_saliency(a)?;
        }
        Ok(pipeline)
    }

    fn source_at(&self, u: f64) -> usize {
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len().saturating_sub(1))
    }

    /// With `saliency_draw = "epoch"`, the index of the source used throughout `epoch`
    /// (drawn from the seed and the epoch only).
    pub fn epoch_source(&self, epoch: u32) -> Option<usize> {
        let seed = self.per_epoch?;
        Some(self.source_at(SplitMix::new(seed ^ 0x5A11_E7C7, epoch as u64).uniform()))
    }

    /// Whether any attack of the pipeline, or its objective, asks for saliency.
    pub fn uses_saliency(&self) -> bool {
        self.attack
            .iter()
            .chain(self.mix.as_ref().map(|(m, _)| m))
            .any(|a| a.requires_saliency)
            || self.objective.as_ref().is_some_and(|o| o.requires_saliency)
    }

    /// The attack used on a batch: the mixed-in one if the coin said so, else the main one.
    fn attack_for(&self, use_mix: bool) -> Option<&AttackComponent> {
        if use_mix {
            self.mix.as_ref().map(|(m, _)| m)
        } else {
            self.attack.as_ref()
        }
    }

    /// The model's inputs for `samples` (the attack's output, or the images themselves),
    /// with the saliency maps of the source drawn for the batch when the chosen attack or
    /// the objective needs them. The mixing coin and the source are drawn from `rng`, the
    /// pipeline's own stream, so they never shift the data order or augmentation.
    pub fn inputs(
        &mut self,
        samples: &Samples,
        epoch: u32,
        epochs: u32,
        phase: Phase,
        oracle: &OracleRef<'_>,
        rng: &mut SplitMix,
    ) -> Result<Inputs, ComponentError> {
        let use_mix = match &self.mix {
            Some((_, p)) => rng.uniform() < *p,
            None => false,
        };
        let needs_saliency = self
            .attack_for(use_mix)
            .is_some_and(|a| a.requires_saliency)
            || self.objective.as_ref().is_some_and(|o| o.requires_saliency);
        let mut batch = samples.keyed_batch(self.seed, epoch, epochs, phase);
        let mut saliency = None;
        if needs_saliency {
            let index = match self.epoch_source(epoch) {
                Some(index) => index,
                None => self.source_at(rng.uniform()),
            };
            let map = self.sources[index].saliency(&batch, oracle)?;
            batch = batch.with_saliency(&map);
            saliency = Some(map);
        }
        let attack = if use_mix {
            self.mix.as_mut().map(|(m, _)| m)
        } else {
            self.attack.as_mut()
        };
        let (images, targets) = match attack {
            Some(attack) => {
                let images = attack.perturb(&batch, oracle)?;
                let n = samples.labels.size()[0];
                // The host's oracles always know their classes; should one not, the
                // targets are only checked to be non-negative.
                let classes = oracle
                    .num_classes()
                    .into_result()
                    .map_or(i64::MAX, i64::from);
                (images, attack.targets(n, classes)?)
            }
            None => (samples.images.shallow_clone(), None),
        };
        Ok(Inputs {
            images,
            saliency,
            targets,
        })
    }
}
