//! Parsing a component's TOML configuration, and the budget notation `8/255`.
use crate::error::PluginError;
use serde::{de::DeserializeOwned, Deserialize, Deserializer};
use std::fmt;

/// Parses a component's configuration table (TOML text). Errors name the component and,
/// for an unknown key, the key and the accepted ones.
pub fn parse_config<T: DeserializeOwned>(component: &str, text: &str) -> Result<T, PluginError> {
    toml::from_str(text).map_err(|e| PluginError::config(format!("[{component}] {}", e.message())))
}

/// A perturbation budget in `[0, 1]` pixel units, written in configs either as a
/// number (`0.0313725`) or as a fraction of 255 levels (`"8/255"`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Epsilon(pub f64);

impl Epsilon {
    /// Parses `"8/255"`, `"0.03"` or `"0"`; the value must be finite and non-negative.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let value = match text.split_once('/') {
            Some((num, den)) => {
                let num: f64 = num
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}`: numerator is not a number"))?;
                let den: f64 = den
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}`: denominator is not a number"))?;
                if den == 0.0 {
                    return Err(format!("`{text}`: denominator is zero"));
                }
                num / den
            }
            None => text
                .parse()
                .map_err(|_| format!("`{text}` is neither a number nor a fraction like 8/255"))?,
        };
        Self::checked(value).map_err(|e| format!("`{text}`: {e}"))
    }

    fn checked(value: f64) -> Result<Self, String> {
        if value.is_finite() && value >= 0.0 {
            Ok(Self(value))
        } else {
            Err(format!(
                "a budget must be finite and non-negative, got {value}"
            ))
        }
    }
}

impl Epsilon {
    /// The budget as people write it for `norm` (`"linf"` or `"l2"`): an ℓ∞ budget in
    /// 1/255 levels where it is one (`8/255`), an ℓ2 budget as a plain number (`0.5`, `1`:
    /// an ℓ2 radius is not a count of intensity levels).
    pub fn shown(self, norm: &str) -> String {
        if norm == "l2" {
            format!("{}", self.0)
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for Epsilon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let levels = self.0 * 255.0;
        if (levels - levels.round()).abs() < 1e-9 {
            write!(f, "{}/255", levels.round())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Epsilon {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Float(f64),
            Int(i64),
            Text(String),
        }
        let parsed = match Raw::deserialize(deserializer)? {
            Raw::Float(v) => Self::checked(v),
            Raw::Int(v) => Self::checked(v as f64),
            Raw::Text(t) => Self::parse(&t),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Epsilon {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractions_numbers_and_rejects_garbage() {
        assert_eq!(Epsilon::parse("8/255").unwrap().0, 8.0 / 255.0);
        assert_eq!(Epsilon::parse(" 0.5 ").unwrap().0, 0.5);
        assert!(Epsilon::parse("8/0").is_err());
        assert!(Epsilon::parse("-1/255").is_err());
        assert!(Epsilon::parse("eight").is_err());
        assert!(Epsilon::parse("nan").is_err());
        assert_eq!(Epsilon(2.0 / 255.0).to_string(), "2/255");
        assert_eq!(Epsilon(1.0).shown("l2"), "1");
        assert_eq!(Epsilon(0.5).shown("l2"), "0.5");
        assert_eq!(Epsilon(1.0).shown("linf"), "255/255");
        assert_eq!(Epsilon(8.0 / 255.0).shown("linf"), "8/255");
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        epsilon: Epsilon,
        #[serde(default)]
        steps: u32,
    }

    #[test]
    fn config_accepts_both_notations_and_names_unknown_keys() {
        let a: Cfg = parse_config("pgd", "epsilon = \"4/255\"\nsteps = 3").unwrap();
        assert_eq!((a.epsilon.0, a.steps), (4.0 / 255.0, 3));
        let b: Cfg = parse_config("pgd", "epsilon = 0.1").unwrap();
        assert_eq!(b.epsilon.0, 0.1);
        let e = parse_config::<Cfg>("pgd", "epsilon = 0.1\nstepz = 2").unwrap_err();
        assert!(
            e.message.contains("[pgd]") && e.message.contains("stepz"),
            "{e}"
        );
    }
}
