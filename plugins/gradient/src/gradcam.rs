//! Grad-CAM++ (Chattopadhay et al. 2018) at a spatial ReLU layer of a checkpoint
//! teacher, upsampled to the image, and guided Grad-CAM++ (its product with guided
//! backprop).
use crate::methods::{source_config, GuidedBackprop};
use crate::teacher::Teacher;
use crate::Output;
use sat_core::{component::Configurable, Batch, Oracle, PluginError, SaliencySource};
use sat_models::relu_backprop;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a Grad-CAM++ map in `[0, 1]` is handed out.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CamOutput {
    /// `2·cam − 1`: +1 on the most salient pixels, −1 where the map is 0 (like `masks`).
    Centered,
    /// The map itself, in `[0, 1]`.
    Unit,
}

source_config!(
    /// Configuration of `gradcam++` (its teacher must be a checkpoint of this project:
    /// Grad-CAM++ reads the teacher's activations).
    GradCamConfig {
        output: CamOutput = CamOutput::Centered,
        /// Which spatial ReLU output (4-D activation) in forward order; negative counts
        /// from the end (−1 = the last one, before pooling).
        layer: i64 = -1,
    }
);

/// The Grad-CAM++ map `[N, 1, H, W]` in `[0, 1]` (per-sample maximum 1, or all 0).
pub fn gradcam_pp(
    teacher: &mut Teacher,
    batch: &Batch,
    oracle: Oracle<'_, '_>,
    layer: i64,
    what: &str,
) -> Result<Tensor, PluginError> {
    let x = batch.images().shallow_clone();
    let (h, w) = (x.size()[2], x.size()[3]);
    let target = teacher.targets(&x, &batch.labels(), oracle)?;
    let model = teacher.native_model(x.device(), oracle, what)?;
    let shapes = relu_backprop::activation_shapes(model, &x);
    let spatial: Vec<usize> = (0..shapes.len())
        .filter(|&i| shapes[i].len() == 4)
        .collect();
    let index = if layer < 0 {
        spatial.len() as i64 + layer
    } else {
        layer
    };
    let Some(&cut) = usize::try_from(index).ok().and_then(|i| spatial.get(i)) else {
        return Err(PluginError::config(format!(
            "[{what}] layer {layer}: the teacher has {} spatial ReLU layers (0..{} or -1..-{})",
            spatial.len(),
            spatial.len().saturating_sub(1),
            spatial.len()
        )));
    };
    let (a, g, _) = tch::with_grad(|| relu_backprop::activation_gradient(model, &x, &target, cut))
        .ok_or_else(|| PluginError::runtime("the teacher's activations changed between passes"))?;
    // α = g² / (2g² + Σ_ab A·g³), weights = Σ_ij α·relu(g), cam = relu(Σ_k w_k A_k).
    let g2 = g.f_pow_tensor_scalar(2)?;
    let g3 = g2.f_mul(&g)?;
    let sum_a = a.f_sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float)?;
    let denom = g2.f_mul_scalar(2.0)?.f_add(&sum_a.f_mul(&g3)?)?;
    let safe = denom.f_where_scalarother(&denom.f_ne(0.0)?, 1.0)?;
    let alpha = g2.f_div(&safe)?;
    let weights =
        alpha
            .f_mul(&g.f_relu()?)?
            .f_sum_dim_intlist([2i64, 3].as_slice(), true, Kind::Float)?;
    let cam = weights
        .f_mul(&a)?
        .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?
        .f_relu()?;
    let cam = cam
        .f_upsample_bilinear2d([h, w], false, None, None)?
        .f_clamp_min(0.0)?;
    let n = cam.size()[0];
    let max = cam
        .f_reshape([n, -1])?
        .f_amax([1i64].as_slice(), false)?
        .f_reshape([n, 1, 1, 1])?;
    let safe_max = max.f_where_scalarother(&max.f_gt(0.0)?, 1.0)?;
    Ok(cam.f_div(&safe_max)?.f_clamp(0.0, 1.0)?)
}

/// Grad-CAM++ at a spatial layer of a checkpoint teacher.
pub struct GradCamPP {
    teacher: Teacher,
    layer: i64,
    output: CamOutput,
}

impl Configurable for GradCamPP {
    type Config = GradCamConfig;
    fn from_config(c: GradCamConfig) -> Result<Self, PluginError> {
        let teacher = c.teacher_config();
        crate::ranges::check_teacher("gradcam++", &teacher)?;
        Ok(Self {
            teacher: Teacher::new(teacher)?,
            layer: c.layer,
            output: c.output,
        })
    }
}

impl SaliencySource for GradCamPP {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let cam = gradcam_pp(&mut self.teacher, batch, oracle, self.layer, "gradcam++")?;
        Ok(match self.output {
            CamOutput::Unit => cam,
            CamOutput::Centered => cam.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?,
        })
    }
}

source_config!(
    /// Configuration of `guided-gradcam++`.
    GuidedGradCamConfig {
        output: Output = Output::Normalized,
        /// The Grad-CAM++ layer, as in `gradcam++`.
        layer: i64 = -1,
    }
);

/// Guided Grad-CAM++: guided backprop weighted pixel-wise by the Grad-CAM++ map (its
/// default output is `normalized`: a sign would discard the weighting).
pub struct GuidedGradCamPP {
    teacher: Teacher,
    layer: i64,
    output: Output,
}

impl Configurable for GuidedGradCamPP {
    type Config = GuidedGradCamConfig;
    fn from_config(c: GuidedGradCamConfig) -> Result<Self, PluginError> {
        let teacher = c.teacher_config();
        crate::ranges::check_teacher("guided-gradcam++", &teacher)?;
        Ok(Self {
            teacher: Teacher::new(teacher)?,
            layer: c.layer,
            output: c.output,
        })
    }
}

impl SaliencySource for GuidedGradCamPP {
    fn saliency(&mut self, batch: &Batch, oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        const WHAT: &str = "guided-gradcam++";
        let cam = gradcam_pp(&mut self.teacher, batch, oracle, self.layer, WHAT)?;
        let guided = GuidedBackprop::attributions(&mut self.teacher, batch, oracle, WHAT)?;
        self.output.apply(&guided.f_mul(&cam)?)
    }
}

sat_core::register_saliency!(
    GradCamPP,
    name = "gradcam++",
    description =
        "Grad-CAM++ of a checkpoint teacher at a spatial layer, upsampled (2·cam − 1 by default)",
);
sat_core::register_saliency!(
    GuidedGradCamPP,
    name = "guided-gradcam++",
    description = "Guided backprop times Grad-CAM++ of a checkpoint teacher",
);
