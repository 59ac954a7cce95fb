//! Targets of targeted attacks: which class each image is pushed towards.
//!
//! An attack with a `target` key reads it as a [`Target`], picks the classes with
//! [`Target::choose`] from the clean logits, and reports them from
//! [`Attack::targets`](crate::Attack::targets), so that the host can count how often the
//! prediction became the target (the targeted success rate).
use crate::error::PluginError;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use tch::{Kind, Tensor};

/// The `target` of a targeted attack, as written in configs.
///
/// TOML: `"none"` (untargeted, the default), `"random"` (a uniformly drawn class other
/// than the label, from libtorch's generator), `"least-likely"` (the class with the
/// lowest clean logit other than the label) or a class index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Untargeted: move away from the label.
    #[default]
    None,
    /// A uniformly random class other than the label, per image.
    Random,
    /// The class the model finds least likely on the clean image (other than the label).
    LeastLikely,
    /// This class for every image.
    Class(u32),
}

impl Target {
    /// Whether this is a targeted setting.
    pub fn is_targeted(self) -> bool {
        self != Target::None
    }

    /// The target class of every image, `[N]` int64 on the logits' device, from the
    /// clean `logits` `[N, K]` and `labels` `[N]`; `None` when untargeted. A fixed
    /// class must be below `K`; images whose label is that class keep it as target.
    pub fn choose(self, logits: &Tensor, labels: &Tensor) -> Result<Option<Tensor>, PluginError> {
        let size = logits.size();
        let (n, classes) = (size[0], size[1]);
        let device = logits.device();
        Ok(match self {
            Target::None => None,
            Target::Class(k) => {
                if i64::from(k) >= classes {
                    return Err(PluginError::config(format!(
                        "target class {k} does not exist: the model has {classes} classes (0 to {})",
                        classes - 1
                    )));
                }
                Some(Tensor::f_full([n], i64::from(k), (Kind::Int64, device))?)
            }
            Target::Random => {
                if classes < 2 {
                    return Err(PluginError::config(
                        "a random target needs at least 2 classes",
                    ));
                }
                // Uniform over the K − 1 other classes: draw in [0, K − 1), skip the label.
                let r = Tensor::f_randint(classes - 1, [n], (Kind::Int64, device))?;
                let skip = r.f_ge_tensor(labels)?.f_to_kind(Kind::Int64)?;
                Some(r.f_add(&skip)?)
            }
            Target::LeastLikely => {
                if classes < 2 {
                    return Err(PluginError::config(
                        "a least-likely target needs at least 2 classes",
                    ));
                }
                let own = labels.f_unsqueeze(1)?;
                let masked = logits.f_detach()?.f_to_kind(Kind::Float)?.f_scatter_value(
                    1,
                    &own,
                    f64::INFINITY,
                )?;
                Some(masked.f_argmin(-1, false)?)
            }
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::None => f.write_str("none"),
            Target::Random => f.write_str("random"),
            Target::LeastLikely => f.write_str("least-likely"),
            Target::Class(k) => write!(f, "{k}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::Class(k) => s.serialize_u32(*k),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""none", "random", "least-likely" or a class index"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
                match v {
                    "none" => Ok(Target::None),
                    "random" => Ok(Target::Random),
                    "least-likely" => Ok(Target::LeastLikely),
                    other => Err(E::custom(format!(
                        r#"unknown target `{other}`: expected "none", "random", "least-likely" or a class index"#
                    ))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Target, E> {
                u32::try_from(v).map(Target::Class).map_err(|_| {
                    E::custom(format!("target class must be a non-negative index, got {v}"))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Target, E> {
                u32::try_from(v)
                    .map(Target::Class)
                    .map_err(|_| E::custom(format!("target class {v} is too large")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[derive(Deserialize, Serialize)]
    struct Holder {
        target: Target,
    }

    #[test]
    fn parses_every_form_and_rejects_others() {
        let parse = |s: &str| toml::from_str::<Holder>(s).map(|h| h.target);
        assert_eq!(parse("target = \"none\"").unwrap(), Target::None);
        assert_eq!(parse("target = \"random\"").unwrap(), Target::Random);
        assert_eq!(
            parse("target = \"least-likely\"").unwrap(),
            Target::LeastLikely
        );
        assert_eq!(parse("target = 3").unwrap(), Target::Class(3));
        assert!(parse("target = -1").is_err());
        assert!(parse("target = \"most-likely\"").is_err());
        for t in [Target::None, Target::Random, Target::LeastLikely, Target::Class(7)] {
            let text = toml::to_string(&Holder { target: t }).unwrap();
            assert_eq!(parse(&text).unwrap(), t, "{text}");
        }
    }

    #[test]
    fn random_targets_are_never_the_label_and_cover_the_others() {
        tch::manual_seed(5);
        let logits = Tensor::randn([4000, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(4, [4000], (Kind::Int64, Device::Cpu));
        let t = Target::Random.choose(&logits, &labels).unwrap().unwrap();
        assert_eq!(t.eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]), 0);
        assert!(t.min().int64_value(&[]) >= 0 && t.max().int64_value(&[]) <= 3);
        // Label 0: targets 1, 2, 3 each about a third of the time.
        let zero = labels.eq(0);
        for k in 1..4 {
            let share = t.eq(k).logical_and(&zero).sum(Kind::Float).double_value(&[])
                / zero.sum(Kind::Float).double_value(&[]);
            assert!((share - 1.0 / 3.0).abs() < 0.06, "class {k}: {share}");
        }
    }

    #[test]
    fn least_likely_skips_the_label_and_fixed_classes_are_checked() {
        let logits = Tensor::from_slice(&[0.0f32, -5.0, 1.0, -1.0, 2.0, 3.0]).reshape([2, 3]);
        let labels = Tensor::from_slice(&[1i64, 0]);
        let t = Target::LeastLikely.choose(&logits, &labels).unwrap().unwrap();
        // Row 0: the lowest logit is the label's (−5), so the next lowest (0 → class 0).
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), vec![0, 1]);
        let fixed = Target::Class(2).choose(&logits, &labels).unwrap().unwrap();
        assert_eq!(Vec::<i64>::try_from(&fixed).unwrap(), vec![2, 2]);
        let err = Target::Class(3).choose(&logits, &labels).unwrap_err();
        assert!(err.to_string().contains("3 classes"), "{err}");
        assert!(Target::None.choose(&logits, &labels).unwrap().is_none());
    }
}
