//! The root module every plugin library exports, and the macro that builds it.
use crate::component::{registrations, ComponentBox, ComponentInfo, ComponentKind};
use crate::error::{catch, PluginError};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RVec},
    StableAbi,
};

/// The versions a library was built against. The host refuses a library whose versions
/// differ from its own.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// `sat-core` version.
    pub sat_core: RStr<'static>,
    /// `tch` version.
    pub tch: RStr<'static>,
    /// libtorch version (without local suffix such as `+cu130`).
    pub libtorch: RStr<'static>,
}

/// The versions this copy of `sat-core` was compiled with.
pub const BUILD_INFO: BuildInfo = BuildInfo {
    sat_core: RStr::from_str(crate::SAT_CORE_VERSION),
    tch: RStr::from_str(crate::TCH_VERSION),
    libtorch: RStr::from_str(crate::LIBTORCH_VERSION),
};

/// The root module of a plugin library.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Name of the crate that built the library.
    pub library: RStr<'static>,
    /// Version of that crate.
    pub library_version: RStr<'static>,
    /// Versions of `sat-core`, `tch` and libtorch it was built against.
    pub build: BuildInfo,
    /// Lists the library's components, or says which registration is broken.
    pub components: extern "C" fn() -> RResult<RVec<ComponentInfo>, PluginError>,
    /// Makes the component `name` of `kind` from its TOML configuration.
    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(
        kind: ComponentKind,
        name: RStr<'_>,
        config: RStr<'_>,
    ) -> RResult<ComponentBox, PluginError>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "sat_plugin";
    const NAME: &'static str = "sat plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn components() -> RResult<RVec<ComponentInfo>, PluginError> {
    catch("listing components", || {
        registrations()
            .map(|r| r.info().map_err(PluginError::config))
            .collect::<Result<RVec<_>, _>>()
    })
    .into()
}

extern "C" fn create(
    kind: ComponentKind,
    name: RStr<'_>,
    config: RStr<'_>,
) -> RResult<ComponentBox, PluginError> {
    crate::component::create(kind, name.as_str(), config.as_str()).into()
}

/// Builds the root module of the library this code is compiled into. Called by
/// [`export_plugin!`]; `library` and `version` name the plugin crate.
pub fn root_module(library: &'static str, version: &'static str) -> PluginModuleRef {
    root_module_with_build(library, version, BUILD_INFO)
}

/// [`root_module`] recording other versions than this build's: only for testing the
/// host's refusal of libraries built against another libtorch or tch.
#[doc(hidden)]
pub fn root_module_with_build(
    library: &'static str,
    version: &'static str,
    build: BuildInfo,
) -> PluginModuleRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    PluginModule {
        library: RStr::from_str(library),
        library_version: RStr::from_str(version),
        build,
        components,
        create,
    }
    .leak_into_prefix()
}

/// Exports the components registered in this crate as a `sat` plugin library.
/// Use once per `cdylib` crate, at the crate root; the crate must also depend on
/// `abi_stable` (the export attribute refers to it by name).
#[macro_export]
macro_rules! export_plugin {
    () => {
        /// The root module `sat-host` loads.
        #[::abi_stable::export_root_module]
        pub fn sat_plugin_root_module() -> $crate::PluginModuleRef {
            $crate::module::root_module(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
        }
    };
}
