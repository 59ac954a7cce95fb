//! Host-side handles to plugin components: every call is checked against the contract
//! (shape, dtype, device, range, budget) and every error names the component.
use sat_core::{AttackBox, Batch, Norm, OracleRef, SaliencyBox, ThreatModel};
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// An error from a component call, naming the component and its library.
#[derive(Debug, thiserror::Error)]
#[error("{kind} `{name}` (from {library}): {message}")]
pub struct ComponentError {
    /// "saliency source" or "attack".
    pub kind: &'static str,
    /// Component name.
    pub name: String,
    /// Library file.
    pub library: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Identity of a component, for error messages.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Component name.
    pub name: String,
    /// Library file.
    pub library: PathBuf,
}

impl Origin {
    fn error(&self, kind: &'static str, message: impl Into<String>) -> ComponentError {
        ComponentError {
            kind,
            name: self.name.clone(),
            library: self.library.clone(),
            message: message.into(),
        }
    }
}

/// The smallest and largest value of `t`, and `extra` (a scalar tensor on `t`'s
/// device), read back to the host in one transfer: on CUDA each read is a
/// synchronisation, and these checks run on every batch. Errors if `t` holds NaN or
/// infinite values (`aminmax` propagates NaN, so both ends are finite exactly when
/// every value is).
fn finite_range(t: &Tensor, extra: Option<Tensor>) -> Result<(f64, f64, f64), String> {
    let values = (|| {
        let (lo, hi) = t.f_aminmax(None, false)?;
        let mut parts = vec![lo, hi];
        if let Some(e) = extra {
            parts.push(e.f_to_kind(t.kind())?);
        }
        Tensor::f_stack(&parts, 0)?
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Double)
    })()
    .map_err(|e| e.to_string())?;
    let values = Vec::<f64>::try_from(&values).map_err(|e| e.to_string())?;
    if !(values[0].is_finite() && values[1].is_finite()) {
        return Err("a tensor with NaN or infinite values".into());
    }
    Ok((values[0], values[1], values.get(2).copied().unwrap_or(0.0)))
}

/// A saliency source from a plugin.
pub struct SaliencyComponent {
    /// Who it is.
    pub origin: Origin,
    inner: SaliencyBox,
}

impl SaliencyComponent {
    /// Wraps a created source.
    pub fn new(origin: Origin, inner: SaliencyBox) -> Self {
        Self { origin, inner }
    }

    /// The maps for `batch`, checked: `[N, 1 or C, H, W]`, float32, batch device,
    /// finite, in `[-1, 1]`.
    pub fn saliency(
        &mut self,
        batch: &Batch,
        oracle: &OracleRef<'_>,
    ) -> Result<Tensor, ComponentError> {
        const KIND: &str = "saliency source";
        let map = self
            .inner
            .saliency(batch, oracle)
            .into_result()
            .map_err(|e| self.origin.error(KIND, e.to_string()))?;
        let map = map.into_tensor();
        let images = batch.images();
        let (want, got) = (images.size(), map.size());
        let channels_ok = got.len() == 4 && (got[1] == 1 || got[1] == want[1]);
        if !(channels_ok && got[0] == want[0] && got[2..] == want[2..]) {
            return Err(self.origin.error(
                KIND,
                format!(
                    "returned a map of shape {got:?}; expected [{}, 1 or {}, {}, {}]",
                    want[0], want[1], want[2], want[3]
                ),
            ));
        }
        if map.kind() != Kind::Float {
            return Err(self.origin.error(
                KIND,
                format!("returned dtype {:?}; expected Float", map.kind()),
            ));
        }
        if map.device() != images.device() {
            return Err(self.origin.error(
                KIND,
                format!(
                    "returned a map on {:?}; the batch is on {:?}",
                    map.device(),
                    images.device()
                ),
            ));
        }
        let (lo, hi, _) = finite_range(&map, None)
            .map_err(|m| self.origin.error(KIND, format!("returned {m}")))?;
        if lo < -1.0 - 1e-5 || hi > 1.0 + 1e-5 {
            return Err(self.origin.error(
                KIND,
                format!("returned values in [{lo}, {hi}]; maps must lie in [-1, 1]"),
            ));
        }
        Ok(map)
    }
}

/// An attack from a plugin.
pub struct AttackComponent {
    /// Who it is.
    pub origin: Origin,
    inner: AttackBox,
    /// Its budget (asked once).
    pub threat: ThreatModel,
    /// Whether it needs saliency maps.
    pub requires_saliency: bool,
}

impl AttackComponent {
    /// Wraps a created attack.
    pub fn new(origin: Origin, inner: AttackBox) -> Self {
        let threat = inner.threat_model();
        let requires_saliency = inner.requires_saliency();
        Self {
            origin,
            inner,
            threat,
            requires_saliency,
        }
    }

    /// The adversarial inputs for `batch`, checked: shape, dtype and device of the
    /// images, finite, inside `[0, 1]` and inside the attack's budget.
    pub fn perturb(
        &mut self,
        batch: &Batch,
        oracle: &OracleRef<'_>,
    ) -> Result<Tensor, ComponentError> {
        const KIND: &str = "attack";
        let adv = self
            .inner
            .perturb(batch, oracle)
            .into_result()
            .map_err(|e| self.origin.error(KIND, e.to_string()))?;
        let adv = adv.into_tensor();
        let images = batch.images();
        if adv.size() != images.size()
            || adv.kind() != Kind::Float
            || adv.device() != images.device()
        {
            return Err(self.origin.error(
                KIND,
                format!(
                    "returned {:?} {:?} on {:?}; expected {:?} Float on {:?}",
                    adv.size(),
                    adv.kind(),
                    adv.device(),
                    images.size(),
                    images.device()
                ),
            ));
        }
        let size = perturbation_size(self.threat.norm, &adv, &images)
            .map_err(|m| self.origin.error(KIND, m))?;
        let (lo, hi, size) = finite_range(&adv, Some(size))
            .map_err(|m| self.origin.error(KIND, format!("returned {m}")))?;
        if lo < -1e-6 || hi > 1.0 + 1e-6 {
            return Err(self.origin.error(
                KIND,
                format!("returned pixels in [{lo}, {hi}], outside [0, 1]"),
            ));
        }
        // SAT and noise are ℓ∞ perturbations of size ε exactly; allow float rounding.
        if size > self.threat.epsilon * (1.0 + 1e-4) + 1e-6 {
            return Err(self.origin.error(
                KIND,
                format!(
                    "returned a perturbation of {} norm {size}, beyond its budget {}",
                    self.threat.norm.as_str(),
                    self.threat.epsilon
                ),
            ));
        }
        Ok(adv)
    }
}

/// The largest per-sample `norm` of `adv − images`, as a scalar tensor on their device.
fn perturbation_size(norm: Norm, adv: &Tensor, images: &Tensor) -> Result<Tensor, String> {
    let delta = adv.f_sub(images).map_err(|e| e.to_string())?;
    match norm {
        Norm::Linf => delta.f_abs().and_then(|d| d.f_max()),
        Norm::L2 => delta
            .f_flatten(1, -1)
            .and_then(|d| d.f_norm_scalaropt_dim(2, [1i64].as_slice(), false))
            .and_then(|n| n.f_max()),
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::finite_range;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn one_read_gives_the_range_and_the_extra_value_and_rejects_non_finite_values() {
        let t = Tensor::from_slice(&[0.25f32, -0.5, 0.75]).view([1, 3]);
        let (lo, hi, extra) = finite_range(&t, Some(Tensor::from(0.125f32))).unwrap();
        assert_eq!((lo, hi, extra), (-0.5, 0.75, 0.125));
        assert_eq!(finite_range(&t, None).unwrap().2, 0.0);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let t = Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu));
            let _ = t.get(1).get(0).get(2).get(3).fill_(bad);
            let err = finite_range(&t, None).unwrap_err();
            assert!(err.contains("NaN or infinite"), "{bad}: {err}");
        }
    }
}
