//! The one training step, used by `run`, `bench` and every later driver:
//!
//! 1. the model's inputs from the pipeline (clean, or an attack's output),
//! 2. the loss ([`training_loss`], the only place a training objective is computed),
//! 3. backward into the optimiser's flat gradient,
//! 4. **the gradients are final**: [`GradientSync::synchronize`] (a no-op in one
//!    process; a data-parallel driver all-reduces there),
//! 5. the optimiser's update (with mixed precision: unscale, inf/NaN check, update or
//!    skip, loss-scale update).
use super::optimizer::{LossScale, Optimizer, Rule};
use crate::config::TrainConfig;
use crate::data::{rng::SplitMix, Samples};
use crate::plugins::component::ObjectiveComponent;
use crate::plugins::oracle::TrainingForward;
use crate::plugins::pipeline::Pipeline;
use sat_core::{OracleAdapter, OracleRef, Phase};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// The point of a step where its gradients are final: after backward, before the
/// optimiser reads them.
///
/// `flat_gradient` is [`Optimizer::flat_gradient`]: every trainable parameter's gradient
/// as one flat float32 tensor, of which the parameters' gradients are views, so an
/// implementation changes them all by changing it in place (a data-parallel one sums it
/// over the processes and divides by their number).
///
/// With mixed precision it holds the gradients of the *scaled* loss: the
/// synchronisation comes before they are unscaled and checked for infinities and NaNs.
/// A non-finite value on one process then reaches every process through the sum, so all
/// of them skip the same steps and change their loss scale alike, and their weights
/// stay identical.
pub trait GradientSync {
    /// Makes `flat_gradient` final, in place.
    fn synchronize(&mut self, flat_gradient: &Tensor) -> anyhow::Result<()>;
}

/// One process: the gradients are final as back-propagated.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl GradientSync for SingleProcess {
    fn synchronize(&mut self, _flat_gradient: &Tensor) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Everything the loss of a step is computed from.
pub struct LossInputs<'a> {
    /// The model being trained (forward passes in training mode).
    pub model: &'a dyn ModuleT,
    /// The pipeline's output for `samples`: the model's inputs (attacked or clean).
    pub inputs: &'a Tensor,
    /// The saliency maps drawn for the batch, when the attack or the objective asked.
    pub saliency: Option<&'a Tensor>,
    /// The clean samples the inputs were made from: images, labels, boxes, masks.
    pub samples: &'a Samples,
    /// The epoch and the run's epochs, as the batch handed to the objective says.
    pub at: StepAt,
    /// The model's number of classes.
    pub classes: i64,
    /// Forward passes under float16 autocast (mixed precision).
    pub amp: bool,
    /// The run's seed, which keys the objective's random draws with the samples' indices.
    pub seed: u64,
}

/// The loss of a step and the logits on its inputs.
pub struct Loss {
    /// The scalar loss (with its graph).
    pub value: Tensor,
    /// The logits on the inputs, for the training accuracy.
    pub logits: Tensor,
}

/// The training loss: the objective plugin's, on the clean batch (with its saliency
/// maps) and the inputs, with the model in training mode. The objective's output is
/// checked (a floating scalar with a graph; logits `[N, classes]`).
pub fn training_loss(
    x: &LossInputs<'_>,
    objective: &mut ObjectiveComponent,
) -> anyhow::Result<Loss> {
    let mut batch = x
        .samples
        .keyed_batch(x.seed, x.at.epoch, x.at.epochs, Phase::Training);
    if let Some(map) = x.saliency {
        batch = batch.with_saliency(map);
    }
    let model = OracleAdapter(TrainingForward {
        model: x.model,
        classes: x.classes as u32,
        amp: x.amp,
    });
    let checked = objective.loss(&batch, x.inputs, &model.as_ref(), x.classes)?;
    Ok(Loss {
        value: checked.loss,
        logits: checked.logits,
    })
}

/// Where a step sits in the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepAt {
    /// 0-based epoch.
    pub epoch: u32,
    /// Epochs of the run.
    pub epochs: u32,
    /// 0-based index of the step over the whole run (epoch × batches per epoch + batch,
    /// as the learning-rate schedule counts).
    pub global_step: u64,
    /// The learning rate of this step.
    pub lr: f64,
}

/// What a step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The loss (before the update).
    pub loss: f64,
    /// Samples whose inputs the model classified right (before the update).
    pub correct: i64,
    /// Samples in the batch.
    pub samples: i64,
    /// Whether the optimiser updated the weights (a mixed-precision step with
    /// non-finite gradients is skipped).
    pub applied: bool,
}

/// The loss of a step was NaN or infinite; the weights were left as they were.
#[derive(Debug, thiserror::Error)]
#[error("the training loss became {0} ({1})")]
pub struct NonFiniteLoss(pub f64, pub String);

/// **Test-only** fault injection, not for users: with `SAT_DEBUG_PANIC_AT_STEP=N` in the
/// environment, the training step whose [`StepAt::global_step`] is `N` panics after its
/// forward pass, as a libtorch error (CUDA out of memory, say) would. The end-to-end
/// tests use it to check that a fault in the host is recorded (status `failed`, the
/// message in `metrics.json` and `log.txt`) and that the run resumes from its last
/// checkpoint. Under torchrun it applies to the first attempt only (not after a restart,
/// `TORCHELASTIC_RESTART_COUNT` > 0), so a restarted job can show that it resumes.
pub const DEBUG_PANIC_AT_STEP: &str = "SAT_DEBUG_PANIC_AT_STEP";

/// **Test-only**, like [`DEBUG_PANIC_AT_STEP`]: with `SAT_DEBUG_SIGINT_AT_STEP=N` the
/// process sends itself SIGINT at global step `N`, so a test stops a run part-way
/// through an epoch at a known place (the stop lands at the next batch or model call).
pub const DEBUG_SIGINT_AT_STEP: &str = "SAT_DEBUG_SIGINT_AT_STEP";

/// The training step with its state: optimiser, loss scale and the gradient
/// synchronisation (the objective is the pipeline's).
pub struct TrainingStep {
    /// The optimiser (its parameters and gradients are views of flat tensors).
    pub optimizer: Optimizer,
    /// Dynamic loss scaling, used with mixed precision.
    pub scaler: LossScale,
    amp: bool,
    sync: Box<dyn GradientSync>,
    panic_at: Option<u64>,
    sigint_at: Option<u64>,
}

impl TrainingStep {
    /// A step with `optimizer`, mixed precision if `amp`, and `sync` at the point where
    /// the gradients are final.
    pub fn new(optimizer: Optimizer, amp: bool, sync: Box<dyn GradientSync>) -> Self {
        let panic_at = std::env::var(DEBUG_PANIC_AT_STEP)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|_| crate::distributed::elastic_restart().is_none());
        let sigint_at = std::env::var(DEBUG_SIGINT_AT_STEP)
            .ok()
            .and_then(|v| v.trim().parse().ok());
        Self {
            optimizer,
            scaler: LossScale::default(),
            amp,
            sync,
            panic_at,
            sigint_at,
        }
    }

    /// The step of `[train]` for the trainable variables of `vs`, in one process.
    pub fn single_process(vs: &nn::VarStore, t: &TrainConfig, amp: bool) -> Self {
        let optimizer = Optimizer::new(vs, Rule::from_config(t));
        Self::new(optimizer, amp, Box::new(SingleProcess))
    }

    /// Whether the step uses mixed precision.
    pub fn amp(&self) -> bool {
        self.amp
    }

    /// Trains `model` on `samples` (on the model's device): the pipeline makes the
    /// inputs (its draws from `draws`), then loss, backward, synchronisation and update.
    /// A non-finite loss is an error ([`NonFiniteLoss`]) and leaves the weights alone.
    pub fn run(
        &mut self,
        model: &dyn ModuleT,
        pipeline: &mut Pipeline,
        samples: &Samples,
        at: StepAt,
        oracle: &OracleRef<'_>,
        draws: &mut SplitMix,
    ) -> anyhow::Result<StepOutput> {
        let inputs =
            pipeline.inputs(samples, at.epoch, at.epochs, Phase::Training, oracle, draws)?;
        let objective = pipeline
            .objective
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("a training step needs a pipeline with an objective"))?;
        let x = LossInputs {
            model,
            inputs: &inputs.images,
            saliency: inputs.saliency.as_ref(),
            samples,
            at,
            classes: i64::from(oracle.num_classes().into_result()?),
            amp: self.amp,
            seed: pipeline.seed,
        };
        let loss = training_loss(&x, objective)?;
        self.inject_fault(at);
        let (value, correct) = loss_and_correct(&loss, &samples.labels)?;
        if !value.is_finite() {
            let who = format!(
                "objective `{}` from {}",
                objective.origin.name,
                objective.origin.library.display()
            );
            return Err(NonFiniteLoss(value, who).into());
        }
        let scaler = self.amp.then_some(&mut self.scaler);
        self.optimizer.backward(&loss.value, scaler.as_deref());
        // The gradients are final here: after backward, before the optimiser reads them.
        self.sync.synchronize(self.optimizer.flat_gradient())?;
        let applied = self.optimizer.apply(at.lr, scaler);
        Ok(StepOutput {
            loss: value,
            correct,
            samples: samples.labels.size()[0],
            applied,
        })
    }

    /// Panics at the step `SAT_DEBUG_PANIC_AT_STEP` names (see [`DEBUG_PANIC_AT_STEP`]);
    /// sends SIGINT at the one `SAT_DEBUG_SIGINT_AT_STEP` names.
    fn inject_fault(&self, at: StepAt) {
        if self.sigint_at == Some(at.global_step) {
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGINT);
        }
        if self.panic_at == Some(at.global_step) {
            panic!(
                "{DEBUG_PANIC_AT_STEP}: deliberate panic at global step {} (epoch {})",
                at.global_step,
                at.epoch + 1
            );
        }
    }
}

/// The loss and the number of right predictions, read back in one transfer (on CUDA each
/// read is a synchronisation).
fn loss_and_correct(loss: &Loss, labels: &Tensor) -> anyhow::Result<(f64, i64)> {
    let correct = loss
        .logits
        .f_argmax(-1, false)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Double)?;
    let both = Tensor::f_stack(
        &[loss.value.f_detach()?.f_to_kind(Kind::Double)?, correct],
        0,
    )?
    .f_to_device(Device::Cpu)?;
    let both = Vec::<f64>::try_from(&both)?;
    Ok((both[0], both[1] as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;

    /// Records the gradient it sees and scales it by `factor`.
    struct Scale {
        factor: f64,
        seen: Vec<Tensor>,
    }

    impl GradientSync for Scale {
        fn synchronize(&mut self, flat_gradient: &Tensor) -> anyhow::Result<()> {
            self.seen.push(flat_gradient.copy());
            tch::no_grad(|| {
                let _ = flat_gradient.shallow_clone().g_mul_scalar_(self.factor);
            });
            Ok(())
        }
    }

    fn linear() -> (nn::VarStore, nn::Linear) {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "l", 4, 3, Default::default());
        let opts = (Kind::Float, Device::Cpu);
        tch::no_grad(|| {
            lin.ws
                .shallow_clone()
                .copy_(&Tensor::linspace(-0.5, 0.5, 12, opts).reshape([3, 4]));
            let _ = lin.bs.as_ref().unwrap().shallow_clone().zero_();
        });
        (vs, lin)
    }

    /// The update sees the gradient after the synchronisation: halving it there is
    /// plain SGD at half the rate; the synchronisation sees the flat gradient of the loss.
    #[test]
    fn the_update_uses_the_synchronised_flat_gradient() {
        let rule = Rule::Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        let x = Tensor::linspace(-1.0, 1.0, 20, (Kind::Float, Device::Cpu)).reshape([5, 4]);
        let y = Tensor::from_slice(&[0i64, 1, 2, 1, 0]);
        let (vs_a, lin_a) = linear();
        let (vs_b, lin_b) = linear();
        let mut halved = Optimizer::new(&vs_a, rule);
        let mut reference = Optimizer::new(&vs_b, rule);
        let mut sync = Scale {
            factor: 0.5,
            seen: Vec::new(),
        };
        for _ in 0..3 {
            halved.backward(&lin_a.forward(&x).cross_entropy_for_logits(&y), None);
            sync.synchronize(halved.flat_gradient()).unwrap();
            assert!(halved.apply(0.2, None));
            reference.backward_step(&lin_b.forward(&x).cross_entropy_for_logits(&y), 0.1);
        }
        let diff = (&lin_a.ws - &lin_b.ws).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        assert_eq!(sync.seen.len(), 3);
        assert_eq!(sync.seen[0].size(), [3 * 4 + 3]);
        assert!(sync.seen[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// With loss scaling the synchronisation sees the scaled gradient, and a non-finite
    /// one it passes on makes the step a skipped one.
    #[test]
    fn with_loss_scaling_the_sync_comes_before_the_inf_check() {
        let rule = Rule::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        };
        let x = Tensor::linspace(-1.0, 1.0, 20, (Kind::Float, Device::Cpu)).reshape([5, 4]);
        let y = Tensor::from_slice(&[0i64, 1, 2, 1, 0]);
        let (vs, lin) = linear();
        let mut opt = Optimizer::new(&vs, rule);
        let mut scaler = LossScale::default();
        let loss = lin.forward(&x).cross_entropy_for_logits(&y);
        opt.backward(&loss, Some(&scaler));
        let scaled = opt.flat_gradient().copy();
        let (vs_plain, lin_plain) = linear();
        let mut plain = Optimizer::new(&vs_plain, rule);
        plain.backward(&lin_plain.forward(&x).cross_entropy_for_logits(&y), None);
        let unscaled = &scaled / scaler.scale;
        let diff = (&unscaled - plain.flat_gradient())
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        assert!(plain.flat_gradient().abs().max().double_value(&[]) > 1e-3);
        // A rank's infinity reaches this rank through the reduction: the step is skipped.
        let _ = opt
            .flat_gradient()
            .get(0)
            .shallow_clone()
            .fill_(f64::INFINITY);
        let before = lin.ws.copy();
        assert!(!opt.apply(0.1, Some(&mut scaler)));
        assert!(lin.ws.equal(&before));
        assert_eq!(scaler.scale, 32768.0);
    }
}
