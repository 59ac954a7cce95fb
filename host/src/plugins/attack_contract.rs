//! The contract every attack in the workspace's plugin libraries keeps, checked for each
//! one the registry lists (so a new attack is covered the day it is registered): the
//! output lies inside its ε-ball and the `[0, 1]` box (the host's checks pass), the
//! input batch is untouched, the result is the same under the same seed, the model's
//! batch-norm statistics and parameters are untouched (attacks see the model in eval
//! mode only), and the attack moves at least one image.
use super::oracle::ModelOracle;
use super::pipeline::{create_eval_attack, Pipeline};
use super::registry::{Registry, SearchPaths};
use crate::config::RunConfig;
use crate::data::{rng::SplitMix, shapes};
use sat_core::{ComponentKind, Epsilon, OracleAdapter, Phase};
use tch::{nn, Device, Kind, Tensor};

/// The workspace's plugin libraries, built next to this test executable's directory.
fn registry() -> Registry {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    assert!(
        dir.join("libsat_plugin_attacks.so").exists(),
        "{} has no plugin libraries: run `cargo build --workspace` first (scripts/test does)",
        dir.display()
    );
    Registry::discover(&SearchPaths {
        standard: vec![dir.to_path_buf()],
        ..Default::default()
    })
    .expect("the workspace's plugins load")
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

#[test]
fn every_registered_attack_keeps_the_contract() {
    let registry = registry();
    let mut config = RunConfig {
        device: "cpu".into(),
        ..RunConfig::default()
    };
    config.train.saliency = vec!["masks".into()];
    let data = shapes::generate(8, 16, 4, 3, 1).expect("shapes");
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(11);
    let model = sat_models::build(&vs.root(), "small-cnn", 4, 4).expect("small-cnn");
    let oracle = OracleAdapter(ModelOracle {
        model: model.as_ref(),
        classes: 4,
    });
    let oracle = oracle.as_ref();
    let samples = data.select(&Tensor::arange(8, (Kind::Int64, Device::Cpu)));
    let pristine = samples.images.copy();
    let before = snapshot(&vs);
    let attacks: Vec<_> = registry
        .entries()
        .filter(|e| e.info.kind == ComponentKind::Attack)
        .filter(|e| e.info.keys.iter().any(|k| k.as_str() == "epsilon"))
        .map(|e| {
            let keys: Vec<String> = e.info.keys.iter().map(|k| k.to_string()).collect();
            (e.info.name.to_string(), keys)
        })
        .collect();
    assert!(attacks.len() >= 5, "too few attacks found: {attacks:?}");
    for (name, keys) in &attacks {
        config
            .components
            .insert(name.clone(), small_settings(keys));
        let probe = create_eval_attack(&registry, &config, name, Epsilon(0.1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let eps = match probe.threat.norm {
            sat_core::Norm::Linf => 0.1,
            sat_core::Norm::L2 => 2.0,
        };
        let run = |seed: i64| {
            let attack = create_eval_attack(&registry, &config, name, Epsilon(eps))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut pipeline = Pipeline::new(&registry, &config, Some(attack))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            tch::manual_seed(seed);
            let mut rng = SplitMix::new(seed as u64, 1);
            pipeline
                .inputs(&samples, 0, 1, Phase::Evaluation, &oracle, &mut rng)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .images
        };
        let first = run(5);
        let again = run(5);
        assert!(first.equal(&again), "{name}: not deterministic under a seed");
        assert!(samples.images.equal(&pristine), "{name}: changed its input");
        let moved = (&first - &pristine).abs().max().double_value(&[]);
        assert!(moved > 0.0, "{name}: left every image as it was");
        for ((key, was), (_, now)) in before.iter().zip(snapshot(&vs)) {
            assert!(was.equal(&now), "{name}: changed the model's `{key}`");
        }
    }
}
