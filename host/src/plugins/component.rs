//! Host-side handles to plugin components: every call is checked against the contract
//! (shape, dtype, device, range, budget, the batch left untouched) and every error names
//! the component. One generic [`Component`] serves every kind.
use sat_core::{
    AttackBox, Batch, ComponentBox, ComponentKind, Norm, ObjectiveBox, OracleRef, PluginError,
    RTensor, SaliencyBox, ThreatModel,
};
use abi_stable::std_types::RResult;
use std::path::PathBuf;
use tch::{Kind, Tensor};

/// An error from a component call, naming the component and its library.
#[derive(Debug, thiserror::Error)]
#[error("{kind} `{name}` (from {library}): {message}")]
pub struct ComponentError {
    /// "saliency source", "attack" or "objective".
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
    fn error(&self, kind: ComponentKind, message: impl Into<String>) -> ComponentError {
        ComponentError {
            kind: kind.noun(),
            name: self.name.clone(),
            library: self.library.clone(),
            message: message.into(),
        }
    }
}

/// The boundary object of one kind of component, as the host receives it.
pub trait ComponentHandle: Sized {
    /// Its kind.
    const KIND: ComponentKind;
    /// The handle inside `made`, if it is of this kind.
    fn from_box(made: ComponentBox) -> Option<Self>;
}

macro_rules! handle {
    ($ty:ty, $variant:ident) => {
        impl ComponentHandle for $ty {
            const KIND: ComponentKind = ComponentKind::$variant;
            fn from_box(made: ComponentBox) -> Option<Self> {
                match made {
                    ComponentBox::$variant(b) => Some(b),
                    _ => None,
                }
            }
        }
    };
}
handle!(SaliencyBox, Saliency);
handle!(AttackBox, Attack);
handle!(ObjectiveBox, Objective);

/// A component from a plugin, with what the host asked of it once.
pub struct Component<B> {
    /// Who it is.
    pub origin: Origin,
    inner: B,
    /// Its budget (attacks; zero for other kinds).
    pub threat: ThreatModel,
    /// Whether it needs saliency maps (attacks, objectives).
    pub requires_saliency: bool,
}

/// A saliency source from a plugin.
pub type SaliencyComponent = Component<SaliencyBox>;
/// An attack from a plugin.
pub type AttackComponent = Component<AttackBox>;
/// A training objective from a plugin.
pub type ObjectiveComponent = Component<ObjectiveBox>;

const NO_BUDGET: ThreatModel = ThreatModel {
    norm: Norm::Linf,
    epsilon: 0.0,
    steps: 0,
};

impl<B: ComponentHandle> Component<B> {
    fn error(&self, message: impl Into<String>) -> ComponentError {
        self.origin.error(B::KIND, message)
    }

    /// Calls the component through `f`, mapping its error and refusing any change it
    /// made to the batch's tensors in place.
    fn call<T>(
        &mut self,
        batch: &Batch,
        f: impl FnOnce(&mut B) -> RResult<T, PluginError>,
    ) -> Result<T, ComponentError> {
        let before = BatchVersions::of(batch);
        let out = f(&mut self.inner).into_result();
        if before != BatchVersions::of(batch) {
            return Err(self.error(
                "modified the batch it was handed in place (plugins must return new tensors)",
            ));
        }
        out.map_err(|e| self.error(e.to_string()))
    }
}

/// The version counters of a batch's tensors: libtorch bumps a tensor's counter on
/// every in-place change, so a plugin that writes into the host's batch is caught
/// without copying or reading any data.
#[derive(Debug, PartialEq, Eq)]
struct BatchVersions(Vec<i64>);

impl BatchVersions {
    fn of(batch: &Batch) -> Self {
        let mut tensors = vec![batch.images(), batch.labels()];
        tensors.extend(batch.boxes());
        tensors.extend(batch.masks().into_iter().flat_map(|(m, p)| [m, p]));
        tensors.extend(batch.saliency());
        Self(
            tensors
                .iter()
                .map(|t| t.f_internal_version().unwrap_or(-1))
                .collect(),
        )
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


impl SaliencyComponent {
    /// Wraps a created source.
    pub fn new(origin: Origin, inner: SaliencyBox) -> Result<Self, ComponentError> {
        Ok(Self {
            origin,
            inner,
            threat: NO_BUDGET,
            requires_saliency: false,
        })
    }

    /// The maps for `batch`, checked: `[N, 1 or C, H, W]`, float32, batch device,
    /// finite, in `[-1, 1]`.
    pub fn saliency(
        &mut self,
        batch: &Batch,
        oracle: &OracleRef<'_>,
    ) -> Result<Tensor, ComponentError> {
        let map = self.call(batch, |s| s.saliency(batch, oracle))?.into_tensor();
        let images = batch.images();
        let (want, got) = (images.size(), map.size());
        let channels_ok = got.len() == 4 && (got[1] == 1 || got[1] == want[1]);
        if !(channels_ok && got[0] == want[0] && got[2..] == want[2..]) {
            return Err(self.error(format!(
                "returned a map of shape {got:?}; expected [{}, 1 or {}, {}, {}]",
                want[0], want[1], want[2], want[3]
            )));
        }
        if map.kind() != Kind::Float {
            return Err(self.error(format!("returned dtype {:?}; expected Float", map.kind())));
        }
        if map.device() != images.device() {
            return Err(self.error(format!(
                "returned a map on {:?}; the batch is on {:?}",
                map.device(),
                images.device()
            )));
        }
        let (lo, hi, _) =
            finite_range(&map, None).map_err(|m| self.error(format!("returned {m}")))?;
        if lo < -1.0 - 1e-5 || hi > 1.0 + 1e-5 {
            return Err(self.error(format!(
                "returned values in [{lo}, {hi}]; maps must lie in [-1, 1]"
            )));
        }
        Ok(map)
    }
}

impl AttackComponent {
    /// Wraps a created attack, asking once for its budget and whether it needs saliency;
    /// a panic or a non-finite budget there is an error, never a disabled budget check.
    pub fn new(origin: Origin, inner: AttackBox) -> Result<Self, ComponentError> {
        let asked = inner
            .threat_model()
            .into_result()
            .and_then(|t| inner.requires_saliency().into_result().map(|r| (t, r)));
        let (threat, requires_saliency) =
            asked.map_err(|e| origin.error(ComponentKind::Attack, e.to_string()))?;
        if !(threat.epsilon.is_finite() && threat.epsilon >= 0.0) {
            return Err(origin.error(
                ComponentKind::Attack,
                format!(
                    "declared the budget {}; it must be finite and non-negative",
                    threat.epsilon
                ),
            ));
        }
        Ok(Self {
            origin,
            inner,
            threat,
            requires_saliency,
        })
    }

    /// The adversarial inputs for `batch`, checked: shape, dtype and device of the
    /// images, finite, inside `[0, 1]` and inside the attack's budget.
    pub fn perturb(
        &mut self,
        batch: &Batch,
        oracle: &OracleRef<'_>,
    ) -> Result<Tensor, ComponentError> {
        let adv = self.call(batch, |a| a.perturb(batch, oracle))?.into_tensor();
        let images = batch.images();
        if adv.size() != images.size()
            || adv.kind() != Kind::Float
            || adv.device() != images.device()
        {
            return Err(self.error(format!(
                "returned {:?} {:?} on {:?}; expected {:?} Float on {:?}",
                adv.size(),
                adv.kind(),
                adv.device(),
                images.size(),
                images.device()
            )));
        }
        let size =
            perturbation_size(self.threat.norm, &adv, &images).map_err(|m| self.error(m))?;
        let (lo, hi, size) =
            finite_range(&adv, Some(size)).map_err(|m| self.error(format!("returned {m}")))?;
        if lo < -1e-6 || hi > 1.0 + 1e-6 {
            return Err(self.error(format!(
                "returned pixels in [{lo}, {hi}], outside [0, 1]"
            )));
        }
        // SAT and noise are ℓ∞ perturbations of size ε exactly; allow float rounding.
        if size > self.threat.epsilon * (1.0 + 1e-4) + 1e-6 {
            return Err(self.error(format!(
                "returned a perturbation of {} norm {size}, beyond its budget {}",
                self.threat.norm.as_str(),
                self.threat.epsilon
            )));
        }
        Ok(adv)
    }

    /// The target classes of the last [`perturb`](Self::perturb) of `n` images, for a
    /// targeted attack, checked: `[n]` int64 in `[0, classes)`.
    pub fn targets(&self, n: i64, classes: i64) -> Result<Option<Tensor>, ComponentError> {
        let asked = self.inner.targets().into_result();
        let targets = asked.map_err(|e| self.error(e.to_string()))?;
        let Some(targets) = targets.into_option().map(|t| t.into_tensor()) else {
            return Ok(None);
        };
        if targets.size() != [n] || targets.kind() != Kind::Int64 {
            return Err(self.error(format!(
                "reported targets {:?} {:?}; expected [{n}] Int64",
                targets.size(),
                targets.kind()
            )));
        }
        if n > 0 {
            let (lo, hi) = (targets.min().int64_value(&[]), targets.max().int64_value(&[]));
            if lo < 0 || hi >= classes {
                return Err(self.error(format!(
                    "reported target classes in [{lo}, {hi}]; the model has {classes} classes"
                )));
            }
        }
        Ok(Some(targets))
    }
}

/// What an objective returned, checked.
pub struct CheckedLoss {
    /// The scalar loss, with its graph (its value is read, and checked to be finite,
    /// by the training step together with the accuracy: one transfer per step).
    pub loss: Tensor,
    /// Logits `[N, classes]` on the inputs.
    pub logits: Tensor,
}

impl ObjectiveComponent {
    /// Wraps a created objective, asking once whether it needs saliency.
    pub fn new(origin: Origin, inner: ObjectiveBox) -> Result<Self, ComponentError> {
        let requires_saliency = inner
            .requires_saliency()
            .into_result()
            .map_err(|e| origin.error(ComponentKind::Objective, e.to_string()))?;
        Ok(Self {
            origin,
            inner,
            threat: NO_BUDGET,
            requires_saliency,
        })
    }

    /// The loss of `batch` on `inputs`, checked: a floating scalar with a graph to the
    /// parameters, and logits `[N, classes]` on the inputs' device.
    pub fn loss(
        &mut self,
        batch: &Batch,
        inputs: &Tensor,
        model: &OracleRef<'_>,
        classes: i64,
    ) -> Result<CheckedLoss, ComponentError> {
        let version = inputs.f_internal_version().unwrap_or(-1);
        let made = self.call(batch, |o| o.loss(batch, RTensor::from_ref(inputs), model))?;
        if inputs.f_internal_version().unwrap_or(-1) != version {
            return Err(self.error("modified its inputs in place"));
        }
        let (loss, logits) = (made.value.into_tensor(), made.logits.into_tensor());
        let floating = matches!(
            loss.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        );
        if loss.numel() != 1 || !floating {
            return Err(self.error(format!(
                "returned a loss of shape {:?} and dtype {:?}; expected a floating scalar",
                loss.size(),
                loss.kind()
            )));
        }
        if !loss.requires_grad() {
            return Err(self.error(
                "returned a loss with no gradient to the model's parameters (detached?)",
            ));
        }
        let n = inputs.size().first().copied().unwrap_or(0);
        if logits.size() != [n, classes] || logits.device() != inputs.device() {
            return Err(self.error(format!(
                "returned logits of shape {:?} on {:?}; expected [{n}, {classes}] on {:?}",
                logits.size(),
                logits.device(),
                inputs.device()
            )));
        }
        let loss = loss.f_reshape([]).map_err(|e| self.error(e.to_string()))?;
        Ok(CheckedLoss { loss, logits })
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
