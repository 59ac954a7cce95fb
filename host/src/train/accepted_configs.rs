//! Property: any configuration the validator accepts builds its data and model and runs
//! one training step without a panic (bounded generators: small images, few samples).
use super::step::{StepAt, TrainingStep};
use super::{build_network, load_datasets};
use crate::config::{validate, ConfigSource, OptimizerKind, RunConfig, ScheduleKind};
use crate::data::rng::{Purpose, SplitMix};
use crate::data::stream::EpochPlan;
use crate::plugins::oracle::ModelOracle;
use crate::plugins::pipeline::Pipeline;
use crate::plugins::registry::Registry;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use sat_core::OracleAdapter;
use tch::Device;

/// The workspace's plugin libraries.
fn registry() -> Registry {
    Registry::of_test_profile().unwrap_or_else(|e| panic!("{e}"))
}

fn pick<T: Clone + std::fmt::Debug + 'static>(values: &[T]) -> impl Strategy<Value = T> {
    proptest::sample::select(values.to_vec())
}

/// Mostly a value from `valid`, sometimes one of `invalid` (edge cases the validator
/// must refuse), so that about half the configurations are accepted.
fn mostly<T: Clone + std::fmt::Debug + 'static>(
    valid: impl Strategy<Value = T> + 'static,
    invalid: &[T],
) -> BoxedStrategy<T> {
    prop_oneof![15 => valid, 1 => pick(invalid)].boxed()
}

prop_compose! {
    fn configs()(
        image_size in mostly(16i64..=40, &[0, 8, 15, 257, 100_000]),
        crop_padding in mostly(0i64..=8, &[41, 1_000_000]),
        classes in mostly(2i64..=6, &[0, 1, 7]),
        train_size in mostly(1usize..=40, &[0]),
        batch_size in mostly(1usize..=70, &[0, 1 << 20]),
        epochs in mostly(1u32..=4, &[0]),
        lr in mostly(pick(&[1e-4, 0.1, 10.0]), &[-1.0, 0.0, f64::NAN, f64::INFINITY]),
        momentum in mostly(pick(&[0.0, 0.5, 0.99]), &[-0.1, 1.0]),
        weight_decay in mostly(pick(&[0.0, 1e-4, 1.0]), &[-1.0, f64::NAN]),
        gamma in mostly(pick(&[0.1, 2.0]), &[-1.0, 0.0]),
        milestones in proptest::collection::vec(0u32..=5, 0..=3),
        sorted in proptest::bool::weighted(0.9),
        sgd in any::<bool>(),
        nesterov in any::<bool>(),
        schedule in pick(&[ScheduleKind::Constant, ScheduleKind::Multistep, ScheduleKind::Cosine, ScheduleKind::OneCycle]),
        width in mostly(1i64..=6, &[0, -3]),
        flip in any::<bool>(),
    ) -> RunConfig {
        let mut milestones = milestones;
        if sorted {
            milestones.retain(|&m| (1..=epochs).contains(&m));
            milestones.sort_unstable();
            milestones.dedup();
        }
        let mut c = RunConfig {
            device: "cpu".into(),
            ..RunConfig::default()
        };
        c.data.image_size = image_size;
        c.data.crop_padding = crop_padding;
        c.data.classes = classes;
        c.data.train_size = (train_size > 0).then_some(train_size);
        c.data.test_size = Some(4);
        c.data.flip = flip;
        c.model.width = width;
        let t = &mut c.train;
        t.batch_size = batch_size;
        t.epochs = epochs;
        t.lr = lr;
        t.momentum = momentum;
        t.weight_decay = weight_decay;
        t.gamma = gamma;
        t.milestones = milestones;
        t.optimizer = if sgd { OptimizerKind::Sgd } else { OptimizerKind::Adam };
        t.nesterov = nesterov;
        t.schedule = schedule;
        c.eval.attacks.clear();
        c
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::fuzz_cases(48), ..Default::default() })]
    #[test]
    fn any_accepted_config_runs_a_training_step(config in configs()) {
        let registry = registry();
        if let Err(e) = validate(&config, &ConfigSource::default()) {
            // Refused: the message names the key and the range.
            prop_assert!(e.to_string().contains("outside") || e.to_string().contains("must"), "{e}");
            return Ok(());
        }
        let outcome = crate::train::fault::catch_panics(|| {
            let (train, _) = load_datasets(&config)?;
            let net = build_network(&config, train.num_classes(), Device::Cpu)?;
            let t = &config.train;
            let mut step = TrainingStep::single_process(&net.vs, t, false);
            let mut pipeline = Pipeline::for_training(&registry, &config)?;
            let batches = train.len() as usize / t.batch_size + 1;
            let schedule = super::schedule::Schedule::new(t.schedule, t.lr, &t.milestones, t.gamma, t.epochs, batches);
            let adapter = OracleAdapter(ModelOracle { model: net.model.as_ref(), classes: train.num_classes() as u32 });
            let oracle = adapter.as_ref();
            let mut draws = SplitMix::stream(config.seed, Purpose::Draws, 0);
            let plan = EpochPlan { batch_size: t.batch_size, seed: config.seed, epoch: 0, rank: 0, world: 1, start_batch: 0 };
            let samples = train.epoch(&config.data, plan).next().expect("one batch")?;
            let at = StepAt { epoch: 0, epochs: t.epochs, global_step: 0, lr: schedule.rate(0) };
            step.run(net.model.as_ref(), &mut pipeline, &samples, at, &oracle, &mut draws)
        });
        prop_assert!(outcome.is_ok(), "{:?}: {:#}", config, outcome.err().unwrap());
    }
}

#[test]
fn the_generator_makes_accepted_configs() {
    // Half of a sample is accepted: the property above exercises training, not only
    // the refusals.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let accepted = (0..200)
        .filter(|_| {
            let c = configs().new_tree(&mut runner).unwrap().current();
            validate(&c, &ConfigSource::default()).is_ok()
        })
        .count();
    assert!(accepted > 60, "{accepted} of 200");
}
