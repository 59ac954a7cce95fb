//! The contract every attack in the workspace's plugin libraries keeps, checked for each
//! one the registry lists (so a new attack is covered the day it is registered): the
//! output lies inside its ε-ball and the `[0, 1]` box (the host's checks pass), the
//! input batch is untouched, the result is the same under the same seed, the model's
//! batch-norm statistics and parameters are untouched (attacks see the model in eval
//! mode only), and the attack moves at least one image.
//!
//! Its own test binary (one process, one test): attacks draw from libtorch's
//! process-wide generator, which tests running in parallel threads would share.
use sat_host::config::RunConfig;
use sat_host::data::{rng::SplitMix, shapes};
use sat_host::plugins::oracle::ModelOracle;
use sat_host::plugins::pipeline::{create_eval_attack, Pipeline};
use sat_host::plugins::registry::Registry;
use sat_core::{ComponentKind, Epsilon, OracleAdapter, Phase};
use tch::{nn, Device, Kind, Tensor};

/// The workspace's plugin libraries.
fn registry() -> Registry {
    Registry::of_test_profile().unwrap_or_else(|e| panic!("{e}"))
}

/// Small settings for the keys an attack has, so that every attack runs in well under
/// a second on a tiny model.
fn small_settings(keys: &[String]) -> toml::Table {
    let mut table = toml::Table::new();
    for (key, value) in [
        ("steps", 3i64),
        ("queries", 40),
        ("binary_search_steps", 2),
        ("restarts", 1),
        ("target_classes", 2),
    ] {
        if keys.iter().any(|k| k == key) {
            table.insert(key.into(), toml::Value::Integer(value));
        }
    }
    if keys.iter().any(|k| k == "learning_rate") {
        table.insert("learning_rate".into(), toml::Value::Float(0.1));
    }
    table
}

/// Every variable of the store, copied.
fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut all: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The attacks of `registry` that can be evaluated (they have an `epsilon`), with keys.
fn attacks(registry: &Registry) -> Vec<(String, Vec<String>)> {
    registry
        .entries()
        .filter(|e| e.info.kind == ComponentKind::Attack)
        .filter(|e| e.info.keys.iter().any(|k| k.as_str() == "epsilon"))
        .map(|e| {
            let keys: Vec<String> = e.info.keys.iter().map(|k| k.to_string()).collect();
            (e.info.name.to_string(), keys)
        })
        .collect()
}

/// Runs every attack on `arch` and checks the contract; `expect_moved`: the model
/// is sensitive enough that every attack must change some image.
fn check_every_attack(registry: &Registry, arch: &str, expect_moved: bool) {
    let mut config = RunConfig {
        device: "cpu".into(),
        ..RunConfig::default()
    };
    config.train.saliency = vec!["masks".into()];
    let data = shapes::generate(8, 16, 4, 3, 1).expect("shapes");
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(11);
    let model = sat_models::build(&vs.root(), arch, 16, 4).expect("model");
    let oracle = OracleAdapter(ModelOracle {
        model: model.as_ref(),
        classes: 4,
    });
    let oracle = oracle.as_ref();
    let mut samples = data.select(&Tensor::arange(8, (Kind::Int64, Device::Cpu)));
    // Labelled with the model's own predictions: every image starts correct, so attacks
    // that return the clean image where they fail (APGD-T, FAB, CW) have work to do.
    samples.labels = tch::no_grad(|| model.forward_t(&samples.images, false)).argmax(-1, false);
    let pristine = samples.images.copy();
    let before = snapshot(&vs);
    let attacks = attacks(registry);
    assert!(attacks.len() >= 14, "too few attacks found: {attacks:?}");
    for (name, keys) in &attacks {
        config.components.insert(name.clone(), small_settings(keys));
        let probe = create_eval_attack(registry, &config, name, Epsilon(0.1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let eps = match probe.threat.norm {
            sat_core::Norm::Linf => 0.3,
            sat_core::Norm::L2 => 6.0,
        };
        let run = |seed: i64| {
            let attack = create_eval_attack(registry, &config, name, Epsilon(eps))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut pipeline = Pipeline::new(registry, &config, Some(attack))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            tch::manual_seed(seed);
            let mut rng = SplitMix::new(seed as u64, 1);
            pipeline
                .inputs(&samples, 0, 1, Phase::Evaluation, &oracle, &mut rng)
                .unwrap_or_else(|e| panic!("{name} on {arch}: {e}"))
                .images
        };
        let first = run(5);
        let again = run(5);
        assert!(first.equal(&again), "{name} on {arch}: not deterministic under a seed");
        assert!(samples.images.equal(&pristine), "{name} on {arch}: changed its input");
        let moved = (&first - &pristine).abs().max().double_value(&[]);
        assert!(!expect_moved || moved > 0.0, "{name} on {arch}: left every image as it was");
        for ((key, was), (_, now)) in before.iter().zip(snapshot(&vs)) {
            assert!(was.equal(&now), "{name} on {arch}: changed the model's `{key}`");
        }
    }
}

#[test]
fn every_registered_attack_keeps_the_contract() {
    let registry = registry();
    // A model without batch norm whose predictions move with its input (a fresh
    // small-cnn predicts one class for everything) ...
    check_every_attack(&registry, "mlp", true);
    // ... and one with batch norm, whose running statistics must not move.
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = sat_models::build(&vs.root(), "small-cnn", 16, 4).expect("small-cnn");
    assert!(vs.variables().keys().any(|k| k.contains("running_mean")));
    check_every_attack(&registry, "small-cnn", false);
}
