//! A reference model for testing plugins without a host: a linear classifier
//! `logits = flatten(x) · Wᵀ + b` whose gradients have closed forms. It answers both
//! the attacks' oracle (eval mode, input gradients only) and the objectives' training
//! model (differentiable in `W` and `b` when they require grad).
use crate::error::PluginError;
use crate::oracle::{
    differentiable_gradient, objective_gradient, Gradient, Objective, OracleAdapter,
    OracleBackend,
};
use tch::{Kind, Tensor};

/// A linear classifier answering oracle calls.
pub struct LinearModel {
    /// Weights `[K, C·H·W]`.
    pub weight: Tensor,
    /// Bias `[K]`.
    pub bias: Tensor,
}

impl LinearModel {
    /// A model with weights drawn from the seeded libtorch generator.
    pub fn random(classes: i64, features: i64, seed: i64) -> Self {
        Self::random_of_kind(classes, features, seed, Kind::Float)
    }
    /// As [`random`](Self::random), in another floating dtype (float64 for finite
    /// differences).
    pub fn random_of_kind(classes: i64, features: i64, seed: i64, kind: Kind) -> Self {
        tch::manual_seed(seed);
        let opts = (kind, tch::Device::Cpu);
        Self {
            weight: Tensor::randn([classes, features], opts),
            bias: Tensor::randn([classes], opts),
        }
    }
    /// The same model with `W` and `b` requiring grad, as a trained model's are.
    pub fn trainable(self) -> Self {
        Self {
            weight: self.weight.detach().set_requires_grad(true),
            bias: self.bias.detach().set_requires_grad(true),
        }
    }
    /// Wraps the model for handing to objective code as the model being trained
    /// (`TrainingModel::new(&adapter.as_ref())`).
    pub fn training_model(self) -> OracleAdapter<Training> {
        OracleAdapter(Training(self))
    }
    /// The logits of `images`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        let flat = images.f_flatten(1, -1)?;
        Ok(flat.f_matmul(&self.weight.f_tr()?)?.f_add(&self.bias)?)
    }
    /// Wraps the model for handing to plugin code.
    pub fn oracle(self) -> OracleAdapter<Self> {
        OracleAdapter(self)
    }
}

impl OracleBackend for LinearModel {
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
        self.bias.size()[0] as u32
    }
}

/// A [`LinearModel`] answering as the model being trained: logits with autograd, input
/// gradients with `create_graph`.
pub struct Training(pub LinearModel);

impl OracleBackend for Training {
    fn logits(&self, images: &Tensor) -> Result<Tensor, PluginError> {
        tch::with_grad(|| self.0.forward(images))
    }
    fn input_gradient(
        &self,
        images: &Tensor,
        objective: &Objective,
    ) -> Result<Gradient, PluginError> {
        differentiable_gradient(|x| self.0.forward(x), images, objective)
    }
    fn num_classes(&self) -> u32 {
        self.0.num_classes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::objective_value;
    use crate::oracle::Oracle;

    #[test]
    fn cross_entropy_gradient_matches_closed_form() {
        let model = LinearModel::random(3, 12, 7);
        let (w, b) = (model.weight.shallow_clone(), model.bias.shallow_clone());
        let adapter = model.oracle();
        let oracle_ref = adapter.as_ref();
        let oracle = Oracle::new(&oracle_ref);
        let x = Tensor::rand([2, 3, 2, 2], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 2]);
        let g = oracle
            .input_gradient(&x, Objective::cross_entropy(&y))
            .unwrap();
        // d CE / d x = (softmax(z) - onehot(y)) · W
        let z = x.flatten(1, -1).matmul(&w.tr()) + &b;
        let expected = (z.softmax(-1, Kind::Float) - y.one_hot(3).to_kind(Kind::Float))
            .matmul(&w)
            .reshape([2, 3, 2, 2]);
        let err = (&g.gradient - expected).abs().max().double_value(&[]);
        assert!(err < 1e-5, "max error {err}");
        assert_eq!(g.value.size(), vec![2]);
        assert!(g.logits.allclose(&z, 1e-5, 1e-5, false));
    }

    #[test]
    fn margin_and_kl_values() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0]).reshape([1, 3]);
        let y = Tensor::from_slice(&[2i64]);
        let m = objective_value(&logits, &Objective::margin(&y)).unwrap();
        assert!((m.double_value(&[0]) - 1.0).abs() < 1e-6);
        let kl = objective_value(&logits, &Objective::kl_divergence(&logits)).unwrap();
        assert!(
            kl.double_value(&[0]).abs() < 1e-6,
            "KL of a distribution with itself is 0"
        );
        let bad = Tensor::from_slice(&[0i64, 1]);
        assert!(objective_value(&logits, &Objective::cross_entropy(&bad)).is_err());
    }
}
