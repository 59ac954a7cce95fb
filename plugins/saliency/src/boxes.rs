//! `boxes`: +1 inside the union of a sample's bounding boxes, −1 outside.
use crate::Fallback;
use sat_core::{component::Configurable, Batch, Oracle, PluginError, SaliencySource};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Configuration of `boxes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoxesConfig {
    /// Width in pixels of a linear ramp from −1 to +1 across each box edge (0 = hard).
    pub soft_edge: f64,
    /// Map for samples without boxes: `"zero"` or `"full"`.
    pub fallback: Fallback,
}

impl Default for BoxesConfig {
    fn default() -> Self {
        Self {
            soft_edge: 0.0,
            fallback: Fallback::Zero,
        }
    }
}

/// Saliency from bounding boxes.
pub struct Boxes {
    config: BoxesConfig,
}

impl Configurable for Boxes {
    type Config = BoxesConfig;
    fn from_config(config: BoxesConfig) -> Result<Self, PluginError> {
        if !(config.soft_edge >= 0.0 && config.soft_edge.is_finite()) {
            return Err(PluginError::config(format!(
                "[boxes] soft_edge must be >= 0, got {}",
                config.soft_edge
            )));
        }
        if config.fallback == Fallback::Boxes {
            return Err(PluginError::config(
                "[boxes] fallback must be \"zero\" or \"full\"",
            ));
        }
        Ok(Self { config })
    }
}

/// Membership `[N, 1, H, W]` in `[0, 1]` of each pixel centre in the union of the boxes
/// `[N, B, 4]` (padding rows have `x1 <= x0`), and whether each sample has any box.
pub fn box_membership(
    boxes: &Tensor,
    height: i64,
    width: i64,
    soft_edge: f64,
) -> Result<(Tensor, Tensor), PluginError> {
    let size = boxes.size();
    if size.len() != 3 || size[2] != 4 {
        return Err(PluginError::invalid_input(format!(
            "boxes must be [N, B, 4], got {size:?}"
        )));
    }
    let device: Device = boxes.device();
    let b = boxes.f_to_kind(Kind::Float)?;
    let coord = |i: i64| -> Result<Tensor, PluginError> {
        Ok(b.f_select(2, i)?.f_unsqueeze(-1)?.f_unsqueeze(-1)?)
    };
    let (x0, y0, x1, y1) = (coord(0)?, coord(1)?, coord(2)?, coord(3)?);
    let opts = (Kind::Float, device);
    let xs = Tensor::f_arange(width, opts)?
        .f_add_scalar(0.5)?
        .f_reshape([1, 1, 1, width])?;
    let ys = Tensor::f_arange(height, opts)?
        .f_add_scalar(0.5)?
        .f_reshape([1, 1, height, 1])?;
    // Signed distance inside each edge, in pixels; positive inside the box.
    let inside_x = xs.f_sub(&x0)?.f_minimum(&x1.f_sub(&xs)?)?;
    let inside_y = ys.f_sub(&y0)?.f_minimum(&y1.f_sub(&ys)?)?;
    let depth = inside_x.f_minimum(&inside_y)?; // [N, B, H, W]
    let member = if soft_edge > 0.0 {
        depth
            .f_div_scalar(soft_edge)?
            .f_add_scalar(0.5)?
            .f_clamp(0.0, 1.0)?
    } else {
        depth.f_gt(0.0)?.f_to_kind(Kind::Float)?
    };
    let valid = x1
        .f_gt_tensor(&x0)?
        .f_logical_and(&y1.f_gt_tensor(&y0)?)?
        .f_to_kind(Kind::Float)?;
    let union = member.f_mul(&valid)?.f_amax([1i64].as_slice(), true)?;
    let has_box = valid
        .f_flatten(1, -1)?
        .f_amax([1i64].as_slice(), false)?
        .f_gt(0.0)?;
    Ok((union, has_box))
}

/// The fallback map value for samples without the annotation.
pub(crate) fn fallback_value(fallback: Fallback) -> f64 {
    match fallback {
        Fallback::Full => 1.0,
        Fallback::Zero | Fallback::Boxes => 0.0,
    }
}

impl SaliencySource for Boxes {
    fn saliency(&mut self, batch: &Batch, _oracle: Oracle<'_, '_>) -> Result<Tensor, PluginError> {
        let images = batch.images();
        let (n, h, w) = (images.size()[0], images.size()[2], images.size()[3]);
        let Some(boxes) = batch.boxes() else {
            return Ok(Tensor::f_full(
                [n, 1, h, w],
                fallback_value(self.config.fallback),
                (Kind::Float, images.device()),
            )?);
        };
        let (member, has_box) = box_membership(&boxes, h, w, self.config.soft_edge)?;
        let map = member.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?;
        let fallback = map.f_full_like(fallback_value(self.config.fallback))?;
        Ok(map.f_where_self(&has_box.f_reshape([n, 1, 1, 1])?, &fallback)?)
    }
}

sat_core::register_saliency!(
    Boxes,
    name = "boxes",
    description = "Bounding boxes: +1 inside the union of the sample's boxes, -1 outside",
);

#[cfg(test)]
mod tests {
    use super::*;
    use sat_core::{testing::LinearModel, Phase};

    #[test]
    fn union_of_boxes_padding_and_missing_boxes() {
        let images = Tensor::zeros([2, 3, 4, 6], (Kind::Float, Device::Cpu));
        let labels = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        // Sample 0: two boxes [0,2)x[0,1) and [4,6)x[3,4); sample 1: padding only.
        let boxes = Tensor::from_slice(&[
            0.0f32, 0., 2., 1., 4., 3., 6., 4., -1., -1., -1., -1., -1., -1., -1., -1.,
        ])
        .reshape([2, 2, 4]);
        let batch = Batch::new(&images, &labels, 0, 1, Phase::Training).with_boxes(&boxes);
        let adapter = LinearModel::random(2, 72, 0).oracle();
        let oracle_ref = adapter.as_ref();
        let mut source = Boxes::from_config(BoxesConfig::default()).unwrap();
        let map = source.saliency(&batch, Oracle::new(&oracle_ref)).unwrap();
        assert_eq!(map.size(), vec![2, 1, 4, 6]);
        let rows: Vec<f32> = Vec::try_from(map.get(0).flatten(0, -1)).unwrap();
        #[rustfmt::skip]
        let expected = [
             1.,  1., -1., -1., -1., -1.,
            -1., -1., -1., -1., -1., -1.,
            -1., -1., -1., -1., -1., -1.,
            -1., -1., -1., -1.,  1.,  1.,
        ];
        assert_eq!(rows, expected);
        assert_eq!(
            map.get(1).abs().sum(Kind::Float).double_value(&[]),
            0.0,
            "no boxes -> zero fallback"
        );
    }

    #[test]
    fn soft_edges_ramp_between_minus_one_and_one() {
        let boxes = Tensor::from_slice(&[2.0f32, 0., 8., 10.]).reshape([1, 1, 4]);
        let (member, _) = box_membership(&boxes, 10, 10, 2.0).unwrap();
        let row: Vec<f32> = Vec::try_from(member.get(0).get(0).get(5)).unwrap();
        assert_eq!(row[0], 0.0);
        assert!(
            row[2] > 0.0 && row[2] < 1.0,
            "edge pixel is partial: {}",
            row[2]
        );
        assert_eq!(row[5], 1.0);
    }
}
