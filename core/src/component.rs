//! Components inside a plugin library, collected with `inventory`, and the one path by
//! which every kind (saliency source, attack, objective) is registered, listed and built.
use crate::attack::{Attack, AttackAdapter, AttackBox};
use crate::error::{catch, PluginError};
use crate::objective::{ObjectiveAdapter, ObjectiveBox, TrainingObjective};
use crate::saliency::{SaliencyAdapter, SaliencyBox, SaliencySource};
use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// What a component is.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ComponentKind {
    /// A [`SaliencySource`].
    Saliency,
    /// An [`Attack`].
    Attack,
    /// A [`TrainingObjective`].
    Objective,
}

impl ComponentKind {
    /// Every kind, in listing order.
    pub const ALL: [ComponentKind; 3] = [
        ComponentKind::Saliency,
        ComponentKind::Attack,
        ComponentKind::Objective,
    ];

    /// `"saliency"`, `"attack"` or `"objective"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Saliency => "saliency",
            ComponentKind::Attack => "attack",
            ComponentKind::Objective => "objective",
        }
    }

    /// How a component of this kind is named in messages (`"saliency source"`, …).
    pub fn noun(self) -> &'static str {
        match self {
            ComponentKind::Saliency => "saliency source",
            ComponentKind::Attack => "attack",
            ComponentKind::Objective => "objective",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A component as listed by a library's root module.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ComponentInfo {
    /// Unique name within its kind (`[a-z0-9+-]+`), used in configs and on the command line.
    pub name: RString,
    /// Saliency source, attack or objective.
    pub kind: ComponentKind,
    /// Version of the crate that defines it.
    pub version: RString,
    /// One-line description.
    pub description: RString,
    /// The default configuration as TOML text, made from the config type's `Default`;
    /// optional keys without a default appear as comments.
    pub default_config: RString,
    /// Every key the configuration accepts (optional ones included).
    pub keys: RVec<RString>,
}

/// Builds a component from its parsed configuration.
pub trait Configurable: Sized {
    /// The configuration, deserialised from the component's TOML table. Its `Default` is
    /// the one source of the defaults that `sat-host plugins describe` shows; it should
    /// use `#[serde(deny_unknown_fields, default)]` so that omitted keys take defaults,
    /// and `Option` for keys that may be left unset.
    type Config: DeserializeOwned + Serialize + Default;
    /// Builds the component.
    fn from_config(config: Self::Config) -> Result<Self, PluginError>;
}

/// A component made by a plugin library, of any kind.
#[repr(C, u8)]
#[derive(StableAbi)]
pub enum ComponentBox {
    /// A saliency source.
    Saliency(SaliencyBox),
    /// An attack.
    Attack(AttackBox),
    /// A training objective.
    Objective(ObjectiveBox),
}

impl ComponentBox {
    /// The kind of the component inside.
    pub fn kind(&self) -> ComponentKind {
        match self {
            ComponentBox::Saliency(_) => ComponentKind::Saliency,
            ComponentBox::Attack(_) => ComponentKind::Attack,
            ComponentBox::Objective(_) => ComponentKind::Objective,
        }
    }
}

/// A trait that a kind of component implements, so that one registration macro and one
/// constructor path serve every kind.
pub trait ComponentTrait {
    /// The kind.
    const KIND: ComponentKind;
    /// Wraps a component for the boundary: panics inside it become errors naming it.
    fn into_box(name: &str, component: Box<Self>) -> ComponentBox;
}

impl ComponentTrait for dyn SaliencySource {
    const KIND: ComponentKind = ComponentKind::Saliency;
    fn into_box(name: &str, component: Box<Self>) -> ComponentBox {
        ComponentBox::Saliency(SaliencyAdapter::boxed(name, component))
    }
}

impl ComponentTrait for dyn Attack {
    const KIND: ComponentKind = ComponentKind::Attack;
    fn into_box(name: &str, component: Box<Self>) -> ComponentBox {
        ComponentBox::Attack(AttackAdapter::boxed(name, component))
    }
}

impl ComponentTrait for dyn TrainingObjective {
    const KIND: ComponentKind = ComponentKind::Objective;
    fn into_box(name: &str, component: Box<Self>) -> ComponentBox {
        ComponentBox::Objective(ObjectiveAdapter::boxed(name, component))
    }
}

/// The defaults of a component's configuration type: TOML text and every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// `Config::default()` as TOML; optional keys left unset as `# key = …` comments.
    pub toml: String,
    /// Every field name of the configuration type, in declaration order.
    pub keys: Vec<String>,
}

/// The [`Defaults`] of the configuration type `T`.
pub fn defaults_of<T: Serialize + Default>(keys: &[&'static str]) -> Result<Defaults, String> {
    let mut toml = toml::to_string(&T::default()).map_err(|e| e.to_string())?;
    let present: toml::Table = toml::from_str(&toml).map_err(|e| e.to_string())?;
    for key in keys.iter().filter(|k| !present.contains_key(**k)) {
        toml.push_str(&format!("# {key} = …  (optional, unset by default)\n"));
    }
    Ok(Defaults {
        toml,
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
    })
}

/// The field names of a `#[derive(Deserialize)]` struct, read from what serde's derive
/// hands to `deserialize_struct` (no value is deserialised).
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// One component's entry in its library's `inventory` collection. Made by
/// [`register_saliency!`], [`register_attack!`] and [`register_objective!`].
pub struct Registration {
    /// Unique name within its kind.
    pub name: &'static str,
    /// Saliency source, attack or objective.
    pub kind: ComponentKind,
    /// Version of the crate that defines it.
    pub version: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// The defaults of its configuration type.
    pub defaults: fn() -> Result<Defaults, String>,
    /// Builds the component from its name and TOML configuration text.
    pub make: fn(&str, &str) -> Result<ComponentBox, PluginError>,
}

inventory::collect!(Registration);

impl Registration {
    /// The listing entry of this registration.
    pub fn info(&self) -> Result<ComponentInfo, String> {
        let defaults = (self.defaults)()
            .map_err(|e| format!("`{}`: its default configuration does not serialise: {e}", self.name))?;
        Ok(ComponentInfo {
            name: self.name.into(),
            kind: self.kind,
            version: self.version.into(),
            description: self.description.into(),
            default_config: defaults.toml.into(),
            keys: defaults.keys.into_iter().map(RString::from).collect(),
        })
    }
}

/// Every component registered in the library this code is compiled into.
pub fn registrations() -> impl Iterator<Item = &'static Registration> {
    inventory::iter::<Registration>.into_iter()
}

/// Builds the component `name` of `kind` from its TOML configuration text, catching
/// panics of the component's code.
pub fn create(kind: ComponentKind, name: &str, config: &str) -> Result<ComponentBox, PluginError> {
    catch(&format!("constructing {} `{name}`", kind.noun()), || {
        let registration = registrations()
            .find(|r| r.name == name && r.kind == kind)
            .ok_or_else(|| {
                PluginError::new(
                    crate::ErrorKind::UnknownComponent,
                    format!("no {} `{name}`", kind.noun()),
                )
            })?;
        (registration.make)(name, config)
    })
}

/// Checks every registration of this library: names valid and unique within their
/// kind, defaults serialisable and listing every key, and each component constructible
/// from its default configuration and from an empty one. Plugin crates call this from a
/// unit test.
pub fn check_registrations() -> Result<usize, String> {
    let mut seen = std::collections::HashSet::new();
    let mut count = 0;
    for r in registrations() {
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '+')
        {
            return Err(format!("component name `{}` must match [a-z0-9+-]+", r.name));
        }
        if !seen.insert((r.kind, r.name)) {
            return Err(format!("{} `{}` is registered twice", r.kind.noun(), r.name));
        }
        let info = r.info()?;
        if info.keys.is_empty() {
            return Err(format!(
                "`{}`: its configuration type lists no keys (use a struct with named fields)",
                r.name
            ));
        }
        for (what, text) in [("default", info.default_config.as_str()), ("empty", "")] {
            let made = (r.make)(r.name, text).map(|b| b.kind());
            match made {
                Ok(kind) if kind == r.kind => {}
                Ok(kind) => return Err(format!("`{}` is registered as {} but builds {kind}", r.name, r.kind)),
                Err(e) => return Err(format!("`{}` rejects its {what} config: {e}", r.name)),
            }
        }
        count += 1;
    }
    Ok(count)
}

/// Registers a saliency source: `register_saliency!(Type, name = "...", description =
/// "...")`. `Type` implements [`SaliencySource`] and [`Configurable`]; its config type's
/// `Default` gives the defaults.
#[macro_export]
macro_rules! register_saliency {
    ($ty:ty, name = $name:expr, description = $description:expr $(,)?) => {
        $crate::__register_component!($ty, dyn $crate::SaliencySource, $name, $description);
    };
}

/// Registers an attack: `register_attack!(Type, name = "...", description = "...")`.
/// `Type` implements [`Attack`] and [`Configurable`].
#[macro_export]
macro_rules! register_attack {
    ($ty:ty, name = $name:expr, description = $description:expr $(,)?) => {
        $crate::__register_component!($ty, dyn $crate::Attack, $name, $description);
    };
}

/// Registers a training objective: `register_objective!(Type, name = "...", description
/// = "...")`. `Type` implements [`TrainingObjective`] and [`Configurable`].
#[macro_export]
macro_rules! register_objective {
    ($ty:ty, name = $name:expr, description = $description:expr $(,)?) => {
        $crate::__register_component!($ty, dyn $crate::TrainingObjective, $name, $description);
    };
}

/// The body shared by the `register_*!` macros: one path for every kind.
#[doc(hidden)]
#[macro_export]
macro_rules! __register_component {
    ($ty:ty, $trait:ty, $name:expr, $description:expr) => {
        const _: () = {
            type Config = <$ty as $crate::component::Configurable>::Config;
            fn make(
                name: &str,
                text: &str,
            ) -> ::std::result::Result<$crate::component::ComponentBox, $crate::PluginError> {
                let config = $crate::parse_config::<Config>($name, text)?;
                let made = <$ty as $crate::component::Configurable>::from_config(config)?;
                let boxed: ::std::boxed::Box<$trait> = ::std::boxed::Box::new(made);
                ::std::result::Result::Ok(
                    <$trait as $crate::component::ComponentTrait>::into_box(name, boxed),
                )
            }
            fn defaults() -> ::std::result::Result<$crate::component::Defaults, ::std::string::String> {
                $crate::component::defaults_of::<Config>($crate::component::field_names::<Config>())
            }
            $crate::inventory::submit! {
                $crate::Registration {
                    name: $name,
                    kind: <$trait as $crate::component::ComponentTrait>::KIND,
                    version: env!("CARGO_PKG_VERSION"),
                    description: $description,
                    defaults,
                    make,
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        steps: u32,
        layer: Option<i64>,
        name: String,
    }

    impl Default for Example {
        fn default() -> Self {
            Self { steps: 3, layer: None, name: "x".into() }
        }
    }

    #[test]
    fn defaults_come_from_the_type_and_list_optional_keys() {
        let keys = field_names::<Example>();
        assert_eq!(keys, ["steps", "layer", "name"]);
        let d = defaults_of::<Example>(keys).unwrap();
        assert_eq!(d.keys, ["steps", "layer", "name"]);
        let table: toml::Table = toml::from_str(&d.toml).unwrap();
        assert_eq!(table.get("steps").and_then(|v| v.as_integer()), Some(3));
        assert!(!table.contains_key("layer"), "{}", d.toml);
        assert!(d.toml.contains("# layer = "), "{}", d.toml);
    }
}
