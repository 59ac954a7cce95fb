//! `masks`: `S = 2m − 1` from segmentation masks (foreground `m = 1`).
//!
//! Masks arrive from the host as foreground probabilities in `[0, 1]` (the dataset
//! loader maps trimap colours to foreground; see the dataset docs). `threshold`
//! binarises them; `invert` flips the polarity for masks that mark the background.
use crate::boxes::{box_membership, fallback_value};
use crate::Fallback;
use sat_core::{component::Configurable, Batch, Oracle, PluginError, SaliencySource};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of `masks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasksConfig {
    /// Foreground where the mask is at least this value; `-1` keeps soft masks as they are.
    pub threshold: f64,
    /// Treat the mask as marking the background.
    pub invert: bool,
    /// Map for samples without a mask: `"zero"`, `"full"` or `"boxes"`.
    pub fallback: Fallback,
}

impl Default for MasksConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            invert: false,
            fallback: Fallback::Boxes,
        }
    }
}

/// Saliency from segmentation masks.
pub struct Masks {
    config: MasksConfig,
}

impl Configurable for Masks {
    type Config = MasksConfig;
    fn from_config(config: MasksConfig) -> Result<Self, PluginError> {
        if config.threshold != -1.0 && !(0.0..=1.0).contains(&config.threshold) {
            return Err(PluginError::config(format!(
                "[masks] threshold must be in [0, 1] or -1 (soft), got {}",
                config.threshold
            )));
        }
        Ok(Self { config })
    }
}

impl Masks {
    fn fallback_map(&self, batch: &Batch, n: i64, h: i64, w: i64) -> Result<Tensor, PluginError> {
        let device = batch.images().device();
        let constant = Tensor::f_full(
            [n, 1, h, w],
            fallback_value(self.config.fallback),
            (Kind::Float, device),
        )?;
        match (self.config.fallback, batch.boxes()) {
            (Fallback::Boxes, Some(boxes)) => {
                let (member, has_box) = box_membership(&boxes, h, w, 0.0)?;
                let map = member.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
                Ok(map.f_where_self(&has_box.f_reshape([n, 1, 1, 1])?, &constant)?)
            }
            _ => Ok(constant),
        }
    }
}

impl SaliencySource for Masks {
    fn saliency(&mut self, batch: &Batch, _oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let images = batch.images();
        let (n, h, w) = (images.size()[0], images.size()[2], images.size()[3]);
        let Some((masks, present)) = batch.masks() else {
            return self.fallback_map(batch, n, h, w);
        };
        if masks.size() != [n, 1, h, w] {
            return Err(PluginError::invalid_input(format!(
                "masks must be [{n}, 1, {h}, {w}], got {:?}",
                masks.size()
            )));
        }
        let mut m = masks.f_to_kind(Kind::Float)?;
        if self.config.invert {
            m = m.f_neg()?.f_add_scalar(1.0)?;
        }
        if self.config.threshold >= 0.0 {
            m = m.f_ge(self.config.threshold)?.f_to_kind(Kind::Float)?;
        }
        let map = m.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        // Most batches have every mask: one read of `present` then saves the fallback's
        // kernels (about twenty with boxes), which on CUDA cost more than the read.
        if bool::try_from(present.f_all()?)? {
            return Ok(map);
        }
        let fallback = self.fallback_map(batch, n, h, w)?;
        Ok(map.f_where_self(&present.f_reshape([n, 1, 1, 1])?, &fallback)?)
    }
}

sat_core::register_saliency!(
    Masks,
    name = "masks",
    description = "Segmentation masks: 2m - 1 (foreground +1, background -1), fallback for samples without one",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};
    use tch::Device;

    #[test]
    fn two_m_minus_one_with_box_fallback_and_inversion() {
        let images = Tensor::zeros([2, 3, 2, 2], (Kind::Float, Device::Cpu));
        let labels = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let masks =
            Tensor::from_slice(&[1.0f32, 0.0, 0.7, 0.2, 0., 0., 0., 0.]).reshape([2, 1, 2, 2]);
        let present = Tensor::from_slice(&[true, false]);
        let boxes = Tensor::from_slice(&[0.0f32, 0., 1., 2., 0., 0., 1., 1.]).reshape([2, 1, 4]);
        let batch = Batch::new(&images, &labels, 0, 1, Phase::Training)
            .with_masks(&masks, &present)
            .with_boxes(&boxes);
        let adapter = LinearModel::random(2, 12, 0).oracle();
        let oracle_ref = adapter.as_ref();
        let mut source = Masks::from_config(MasksConfig::default()).unwrap();
        let map = source.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        let values: Vec<f32> = Vec::try_from(map.flatten(0, -1)).unwrap();
        assert_eq!(
            values,
            [1., -1., 1., -1., /* from the box */ 1., -1., -1., -1.]
        );
        let mut inverted = Masks::from_config(MasksConfig {
            invert: true,
            ..MasksConfig::default()
        })
        .unwrap();
        let inv: Vec<f32> = Vec::try_from(
            inverted
                .saliency(&batch, Oracle::new(&oracle_ref))
                .unwrap()
                .get(0)
                .flatten(0, -1),
        )
        .unwrap();
        assert_eq!(inv, [-1., 1., -1., 1.]);
    }
}
