//! Fixtures for the objectives' tests: a float64 linear model with closed-form
//! gradients, and the checks every objective goes through.
use crate::ce::{CeConfig, CrossEntropy};
use sat_core::component::{create, Configurable};
use sat_core::{
    testing::LinearModel, Batch, ComponentKind, Loss, Phase, TrainingModel, TrainingObjective,
};
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// Classes of the test model.
pub const CLASSES: i64 = 3;
const SHAPE: [i64; 4] = [4, 2, 3, 3];
const FEATURES: i64 = 2 * 3 * 3;
const OPTS: (Kind, Device) = (Kind::Double, Device::Cpu);

static GENERATOR: Mutex<()> = Mutex::new(());

/// Serialises the tests that seed or draw from libtorch's global generator (tests run
/// on several threads).
pub fn rng_lock() -> MutexGuard<'static, ()> {
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// The message of the error that building component `name` from `text` gives.
pub fn config_error(name: &str, text: &str) -> String {
    match create(ComponentKind::Objective, name, text) {
        Ok(_) => panic!("[{name}] `{text}` was accepted"),
        Err(e) => e.message.to_string(),
    }
}

/// Logits `flatten(x)·Wᵀ + b`.
pub fn logits_of(w: &Tensor, b: &Tensor, x: &Tensor) -> Tensor {
    x.flatten(1, -1).matmul(&w.tr()) + b
}

/// The batch mean of `CE_n = −log p_{y_n}`, in float64 (tch's `cross_entropy_for_logits`
/// computes in float32).
pub fn mean_cross_entropy_of(w: &Tensor, b: &Tensor, x: &Tensor, y: &Tensor) -> f64 {
    let logp = logits_of(w, b, x).log_softmax(-1, Kind::Double);
    let onehot = y.one_hot(CLASSES).to_kind(Kind::Double);
    -(logp * onehot)
        .sum_dim_intlist(-1, false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// `∇ₓ CE_n = Wᵀ(p − e_y)`, shaped like `x`.
pub fn ce_input_gradient_of(w: &Tensor, b: &Tensor, x: &Tensor, y: &Tensor) -> Tensor {
    let p = logits_of(w, b, x).softmax(-1, Kind::Double);
    (p - y.one_hot(CLASSES).to_kind(Kind::Double))
        .matmul(w)
        .reshape(x.size())
}

/// The batch mean of the per-sample squared norm.
pub fn mean_squared_norm(t: &Tensor) -> f64 {
    t.flatten(1, -1)
        .square()
        .sum_dim_intlist(-1, false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Per-sample cosine over `C·H·W`.
pub fn cosines(a: &Tensor, b: &Tensor) -> Tensor {
    let (a, b) = (a.flatten(1, -1), b.flatten(1, -1));
    let dot = (&a * &b).sum_dim_intlist(-1, false, Kind::Double);
    let norm = |t: &Tensor| t.square().sum_dim_intlist(-1, false, Kind::Double).sqrt();
    dot / (norm(&a) * norm(&b))
}

/// A batch, the model's inputs (a perturbed copy), saliency maps and a linear model,
/// all float64.
pub struct Fixture {
    /// Clean images `[4, 2, 3, 3]` in `[0, 1]`.
    pub images: Tensor,
    /// Labels.
    pub labels: Tensor,
    /// The model's inputs: the images moved by a little noise, in `[0, 1]`.
    pub inputs: Tensor,
    /// Saliency maps `[4, 1, 3, 3]` in `[−1, 1]`.
    pub saliency: Tensor,
    /// `W`, `[K, C·H·W]`.
    pub weight: Tensor,
    /// `b`, `[K]`.
    pub bias: Tensor,
}

impl Fixture {
    /// A fixture drawn from `seed`.
    pub fn new(seed: i64) -> Self {
        let model = LinearModel::random_of_kind(CLASSES, FEATURES, seed, Kind::Double);
        let images = Tensor::rand(SHAPE, OPTS);
        let inputs = (&images + Tensor::randn(SHAPE, OPTS) * 0.05).clamp(0.0, 1.0);
        let saliency = Tensor::rand([SHAPE[0], 1, SHAPE[2], SHAPE[3]], OPTS) * 2.0 - 1.0;
        Self {
            images,
            labels: Tensor::from_slice(&[0i64, 2, 1, 2]),
            inputs,
            saliency,
            weight: model.weight,
            bias: model.bias,
        }
    }

    /// The clean batch, with the saliency maps.
    pub fn batch(&self) -> Batch {
        Batch::new(&self.images, &self.labels, 0, 1, Phase::Training).with_saliency(&self.saliency)
    }

    /// Logits of the fixture's model on `x`.
    pub fn logits(&self, x: &Tensor) -> Tensor {
        logits_of(&self.weight, &self.bias, x)
    }

    /// Softmax of [`logits`](Self::logits).
    pub fn probabilities(&self, x: &Tensor) -> Tensor {
        self.logits(x).softmax(-1, Kind::Double)
    }

    /// `∇ₓ CE_n = Wᵀ(p − e_y)` on `x`.
    pub fn ce_input_gradient(&self, x: &Tensor) -> Tensor {
        ce_input_gradient_of(&self.weight, &self.bias, x, &self.labels)
    }

    /// `∇ₓ Σₖ log pₖ = Σₖ Wₖ − K·Wᵀp` on `x`.
    pub fn log_probability_sum_gradient(&self, x: &Tensor) -> Tensor {
        let p = self.probabilities(x);
        let all = self.weight.sum_dim_intlist(0, true, Kind::Double);
        (all - p.matmul(&self.weight) * CLASSES as f64).reshape(x.size())
    }

    /// The loss of `objective` on `inputs` with the model `(w, b)`, the generator seeded
    /// with `seed` first, and the loss's gradients with respect to `w` and `b`.
    pub fn run_with(
        &self,
        objective: &mut dyn TrainingObjective,
        inputs: &Tensor,
        w: &Tensor,
        b: &Tensor,
        seed: i64,
    ) -> (Loss, Tensor, Tensor) {
        let model = LinearModel {
            weight: w.detach().copy(),
            bias: b.detach().copy(),
        }
        .trainable();
        let (w, b) = (model.weight.shallow_clone(), model.bias.shallow_clone());
        let adapter = model.training_model();
        let model_ref = adapter.as_ref();
        let batch = self.batch();
        tch::manual_seed(seed);
        let loss = objective
            .loss(&batch, inputs, TrainingModel::new(&model_ref))
            .expect("the loss");
        assert_eq!(loss.value.size(), Vec::<i64>::new(), "the loss is a scalar");
        assert!(
            !w.grad().defined(),
            "no gradient accumulated into the parameters"
        );
        let mut grads = Tensor::run_backward(&[&loss.value], &[&w, &b], false, false);
        let gb = grads.pop().expect("gradient wrt b");
        let gw = grads.pop().expect("gradient wrt W");
        (loss, gw, gb)
    }

    /// [`run_with`](Self::run_with) on the fixture's inputs and model.
    pub fn run(&self, objective: &mut dyn TrainingObjective, seed: i64) -> (Loss, Tensor, Tensor) {
        self.run_with(objective, &self.inputs, &self.weight, &self.bias, seed)
    }

    /// With its weight at 0, `objective` gives exactly the cross-entropy loss and its
    /// gradients: on the inputs, or on the clean images when `on_clean`.
    pub fn assert_zero_weight_is_ce(&self, objective: &mut dyn TrainingObjective, on_clean: bool) {
        let mut ce = CrossEntropy::from_config(CeConfig::default()).unwrap();
        let reference_inputs = if on_clean { &self.images } else { &self.inputs };
        let (expected, ew, eb) =
            self.run_with(&mut ce, reference_inputs, &self.weight, &self.bias, 0);
        let (got, gw, gb) = self.run(objective, 0);
        assert!(got.value.equal(&expected.value), "{got:?} vs {expected:?}");
        assert!(
            gw.equal(&ew),
            "dL/dW differs by {}",
            (&gw - &ew).abs().max()
        );
        assert!(
            gb.equal(&eb),
            "dL/db differs by {}",
            (&gb - &eb).abs().max()
        );
        let on_inputs = self.logits(&self.inputs);
        assert!(
            got.logits.allclose(&on_inputs, 1e-12, 1e-12, false),
            "logits on the inputs"
        );
    }

    /// `(loss(λ) − loss(0)) / λ` equals `expected`, to 1e-9.
    pub fn assert_penalty(
        &self,
        weighted: &mut dyn TrainingObjective,
        unweighted: &mut dyn TrainingObjective,
        lambda: f64,
        expected: f64,
        seed: i64,
    ) {
        let (with, ..) = self.run(weighted, seed);
        let (without, ..) = self.run(unweighted, seed);
        let penalty = (with.value - without.value).double_value(&[]) / lambda;
        assert!(
            (penalty - expected).abs() < 1e-9,
            "penalty {penalty}, closed form {expected}"
        );
        assert!(
            expected.abs() > 1e-6,
            "the check is not vacuous: {expected}"
        );
    }

    /// The autograd gradients `(dW, db)` agree with central finite differences of
    /// `f(W, b)` at the fixture's model (h = 1e-6, relative error < 1e-5 in norm).
    pub fn assert_gradients_match(
        &self,
        (gw, gb): (Tensor, Tensor),
        mut f: impl FnMut(&Tensor, &Tensor) -> f64,
    ) {
        let h = 1e-6;
        let nudged = |t: &Tensor, i: usize, d: f64| {
            let mut v = Vec::<f64>::try_from(t.detach().flatten(0, -1)).expect("f64 values");
            v[i] += d;
            Tensor::from_slice(&v).reshape(t.size())
        };
        let mut fw = Vec::new();
        for i in 0..self.weight.numel() {
            let up = f(&nudged(&self.weight, i, h), &self.bias);
            let down = f(&nudged(&self.weight, i, -h), &self.bias);
            fw.push((up - down) / (2.0 * h));
        }
        let mut fb = Vec::new();
        for i in 0..self.bias.numel() {
            let up = f(&self.weight, &nudged(&self.bias, i, h));
            let down = f(&self.weight, &nudged(&self.bias, i, -h));
            fb.push((up - down) / (2.0 * h));
        }
        let fw = Tensor::from_slice(&fw).reshape(self.weight.size());
        let fb = Tensor::from_slice(&fb);
        for (what, auto, numeric) in [("W", gw, fw), ("b", gb, fb)] {
            let scale = numeric.norm().double_value(&[]);
            let err = (&auto - &numeric).norm().double_value(&[]) / scale;
            assert!(
                scale > 1e-6 && err < 1e-5,
                "d/d{what}: relative error {err} (norm {scale})"
            );
        }
    }

    /// The autograd gradient of `objective`'s loss with respect to `W` and `b` agrees
    /// with central finite differences of the same loss (the generator reseeded with
    /// `seed` before each evaluation).
    pub fn assert_finite_differences(&self, objective: &mut dyn TrainingObjective, seed: i64) {
        let (_, gw, gb) = self.run(objective, seed);
        self.assert_gradients_match((gw, gb), |w, b| {
            let (loss, ..) = self.run_with(objective, &self.inputs, w, b, seed);
            loss.value.double_value(&[])
        });
    }

    /// Neither the batch nor the inputs change while `objective` computes its loss.
    pub fn assert_inputs_untouched(&self, objective: &mut dyn TrainingObjective) {
        let before = [&self.images, &self.inputs, &self.saliency, &self.labels].map(|t| t.copy());
        let (loss, ..) = self.run(objective, 0);
        assert!(loss.value.double_value(&[]).is_finite());
        let after = [&self.images, &self.inputs, &self.saliency, &self.labels];
        for (b, a) in before.iter().zip(after) {
            assert!(b.equal(a), "an input was modified in place");
        }
    }
}
