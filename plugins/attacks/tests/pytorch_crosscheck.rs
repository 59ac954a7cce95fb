//! The attack plugins against an independent PyTorch implementation: the helper
//! `tests/pytorch/crosscheck.py` (run with the torch 2.13.0 that scripts/setup-libtorch
//! installs) exports a CNN with fixed weights as TorchScript and computes FGSM and PGD
//! (no random start); the plugins, given the same model through the oracle, must
//! reproduce the same adversarial images within 1e-5.
use sat_core::component::Configurable;
use sat_core::{
    objective_gradient, Attack, Batch, Gradient, Objective, Oracle, OracleAdapter, OracleBackend,
    Phase, PluginError,
};
use sat_plugin_attacks::fgsm::{Fgsm, FgsmConfig};
use sat_plugin_attacks::pgd::{Pgd, PgdConfig};
use std::path::Path;
use tch::{CModule, Kind, Tensor};

struct TorchScript(CModule);

impl TorchScript {
    fn forward(&self, x: &Tensor) -> Result<Tensor, PluginError> {
        Ok(self.0.forward_ts(&[x])?)
    }
}

impl OracleBackend for TorchScript {
    fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        tch::no_grad(|| self.forward(images))
    }
    fn input_gradient(
        &self,
        images: &Tensor,
        objective: &Objective,
    ) -> Result<Gradient, PluginError> {
        objective_gradient(|x| self.forward(x), images, objective)
    }
    fn num_classes(&self) -> u32 {
        5
    }
}

fn tensor(value: &serde_json::Value) -> Tensor {
    let shape: Vec<i64> = value["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let values: Vec<f32> = value["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_slice(&values).reshape(shape)
}

#[test]
fn fgsm_and_pgd_match_pytorch_within_1e_5() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-libtorch (scripts/test does)",
        python.display()
    );
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(&python)
        .arg(root.join("tests/pytorch/crosscheck.py"))
        .arg(out.path())
        .env("PYTHONWARNINGS", "ignore")
        .status()
        .expect("run the PyTorch helper");
    assert!(status.success(), "the PyTorch helper failed");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("reference.json")).unwrap())
            .unwrap();
    assert!(reference["torch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.13.0"));

    let mut module = CModule::load(out.path().join("model.pt")).expect("load TorchScript");
    module.set_eval();
    let adapter = OracleAdapter(TorchScript(module));
    let oracle_ref = adapter.as_ref();
    let oracle = Oracle::new(&oracle_ref);
    let images = tensor(&reference["images"]);
    let labels: Vec<i64> = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let labels = Tensor::from_slice(&labels);
    let batch = Batch::new(&images, &labels, 0, 1, Phase::Evaluation);

    let compare = |name: &str, ours: &Tensor| {
        let theirs = tensor(&reference[name]);
        assert_eq!(ours.size(), theirs.size());
        let err = (ours - &theirs).abs().max().double_value(&[]);
        assert!(err <= 1e-5, "{name}: max |rust - pytorch| = {err}");
        // Not vacuous: the attack moved the images.
        assert!(
            (&theirs - &images).abs().max().double_value(&[]) > 1e-3,
            "{name} did nothing"
        );
    };

    let mut fgsm = Fgsm::from_config(FgsmConfig::default()).unwrap();
    compare("fgsm", &fgsm.perturb(&batch, oracle).unwrap());

    let config = PgdConfig {
        random_start: false,
        steps: 5,
        ..PgdConfig::default()
    };
    let mut pgd = Pgd::from_config(config).unwrap();
    compare(
        "pgd",
        &pgd.perturb(&batch, oracle).unwrap().to_kind(Kind::Float),
    );
}
