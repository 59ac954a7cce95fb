//! Components inside a plugin library, collected with `inventory`.
use crate::attack::Attack;
use crate::error::PluginError;
use crate::saliency::SaliencySource;
use abi_stable::{std_types::RString, StableAbi};
use serde::de::DeserializeOwned;
use std::fmt;

/// What a component is.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// A [`SaliencySource`].
    Saliency,
    /// An [`Attack`].
    Attack,
}

impl ComponentKind {
    /// `"saliency"` or `"attack"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Saliency => "saliency",
            ComponentKind::Attack => "attack",
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
    /// Unique name (`[a-z0-9+-]+`), used in configs and on the command line.
    pub name: RString,
    /// Saliency source or attack.
    pub kind: ComponentKind,
    /// Version of the crate that defines it.
    pub version: RString,
    /// One-line description.
    pub description: RString,
    /// The default configuration as TOML text; every accepted key appears in it.
    pub default_config: RString,
}

/// Builds a component from its parsed configuration.
pub trait Configurable: Sized {
    /// The configuration, deserialised from the component's TOML table. It should use
    /// `#[serde(deny_unknown_fields, default)]` so that omitted keys take defaults.
    type Config: DeserializeOwned;
    /// Builds the component.
    fn from_config(config: Self::Config) -> Result<Self, PluginError>;
}

/// How a registered component is made from its TOML configuration text.
#[derive(Clone, Copy)]
pub enum Constructor {
    /// Makes a saliency source.
    Saliency(fn(&str) -> Result<Box<dyn SaliencySource>, PluginError>),
    /// Makes an attack.
    Attack(fn(&str) -> Result<Box<dyn Attack>, PluginError>),
}

impl Constructor {
    /// The kind of component this constructor makes.
    pub fn kind(&self) -> ComponentKind {
        match self {
            Constructor::Saliency(_) => ComponentKind::Saliency,
            Constructor::Attack(_) => ComponentKind::Attack,
        }
    }
}

/// One component's entry in its library's `inventory` collection.
pub struct Registration {
    /// Unique name.
    pub name: &'static str,
    /// Version of the crate that defines it.
    pub version: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Default configuration (TOML); lists every accepted key.
    pub default_config: &'static str,
    /// Constructor.
    pub constructor: Constructor,
}

inventory::collect!(Registration);

impl Registration {
    /// The listing entry of this registration.
    pub fn info(&self) -> ComponentInfo {
        ComponentInfo {
            name: self.name.into(),
            kind: self.constructor.kind(),
            version: self.version.into(),
            description: self.description.into(),
            default_config: self.default_config.into(),
        }
    }
}

/// Every component registered in the library this code is compiled into.
pub fn registrations() -> impl Iterator<Item = &'static Registration> {
    inventory::iter::<Registration>.into_iter()
}

/// Checks every registration of this library: names valid and unique, and each
/// component constructible from its default configuration and from an empty one.
/// Plugin crates call this from a unit test.
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
            return Err(format!(
                "component name `{}` must match [a-z0-9+-]+",
                r.name
            ));
        }
        if !seen.insert(r.name) {
            return Err(format!("component `{}` is registered twice", r.name));
        }
        for (what, text) in [("default", r.default_config), ("empty", "")] {
            let made = match r.constructor {
                Constructor::Saliency(f) => f(text).map(drop),
                Constructor::Attack(f) => f(text).map(drop),
            };
            made.map_err(|e| format!("`{}` rejects its {what} config: {e}", r.name))?;
        }
        count += 1;
    }
    Ok(count)
}

/// Registers a saliency source: `register_saliency!(Type, name = "...",
/// description = "...", defaults = "toml")`. `Type` implements [`SaliencySource`] and
/// [`Configurable`].
#[macro_export]
macro_rules! register_saliency {
    ($ty:ty, name = $name:expr, description = $description:expr, defaults = $defaults:expr $(,)?) => {
        $crate::__register_component!(
            $ty,
            Saliency,
            $crate::SaliencySource,
            $name,
            $description,
            $defaults
        );
    };
}

/// Registers an attack: `register_attack!(Type, name = "...", description = "...",
/// defaults = "toml")`. `Type` implements [`Attack`] and [`Configurable`].
#[macro_export]
macro_rules! register_attack {
    ($ty:ty, name = $name:expr, description = $description:expr, defaults = $defaults:expr $(,)?) => {
        $crate::__register_component!($ty, Attack, $crate::Attack, $name, $description, $defaults);
    };
}

/// The body shared by [`register_saliency!`] and [`register_attack!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __register_component {
    ($ty:ty, $variant:ident, $trait:path, $name:expr, $description:expr, $defaults:expr) => {
        const _: () = {
            fn construct(
                text: &str,
            ) -> ::std::result::Result<::std::boxed::Box<dyn $trait>, $crate::PluginError> {
                let config = $crate::parse_config::<
                    <$ty as $crate::component::Configurable>::Config,
                >($name, text)?;
                let made = <$ty as $crate::component::Configurable>::from_config(config)?;
                ::std::result::Result::Ok(::std::boxed::Box::new(made))
            }
            $crate::inventory::submit! {
                $crate::Registration {
                    name: $name,
                    version: env!("CARGO_PKG_VERSION"),
                    description: $description,
                    default_config: $defaults,
                    constructor: $crate::Constructor::$variant(construct),
                }
            }
        };
    };
}
