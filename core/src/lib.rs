//! `sat-core`: the contract between the `sat-host` runtime and its plugin libraries.
//!
//! A plugin library is a `cdylib` that holds one or more *components*: saliency
//! sources ([`SaliencySource`]), attacks ([`Attack`]) and training objectives
//! ([`TrainingObjective`]). Components register themselves with [`register_saliency!`],
//! [`register_attack!`] or [`register_objective!`] (collected with `inventory`; the
//! defaults come from each component's config type), and [`export_plugin!`] turns the
//! collection into the library's ABI-stable root module ([`PluginModule`]), which the
//! host loads with `abi_stable`.
//!
//! Tensors cross the boundary as [`RTensor`], an owned handle around a libtorch tensor
//! (no copy, CPU or CUDA). Errors cross as values ([`PluginError`]); a panic inside a
//! component is caught on its side of the boundary and returned as an error.
//! The host answers model queries from plugins through the [`Oracle`] (eval mode, input
//! gradients only) and, for objectives, the [`TrainingModel`] (training mode,
//! differentiable in the parameters).

// `#[sabi_trait]` (abi_stable 0.11) expands to impls inside anonymous consts.
#![allow(non_local_definitions)]

pub mod attack;
pub mod batch;
pub mod component;
pub mod config;
pub mod draw;
pub mod error;
pub mod module;
pub mod objective;
pub mod oracle;
pub mod saliency;
pub mod target;
pub mod tensor;
pub mod testing;

pub use attack::{Attack, AttackAbi_TO, AttackBox, Norm, ThreatModel};
pub use batch::{Batch, Phase};
pub use component::{
    check_registrations, ComponentBox, ComponentInfo, ComponentKind, Configurable, Registration,
};
pub use config::{parse_config, Epsilon};
pub use draw::{DrawKeys, Draws};
pub use error::{CoreError, ErrorKind, PluginError};
pub use module::{BuildInfo, PluginModule, PluginModuleRef, BUILD_INFO};
pub use objective::{Loss, LossAbi, ObjectiveAbi_TO, ObjectiveBox, TrainingObjective};
pub use oracle::{differentiable_gradient, objective_gradient, objective_value};
pub use oracle::{
    Gradient, GradientAbi, Objective, Oracle, OracleAbi_TO, OracleAdapter, OracleBackend,
    OracleRef, TrainingModel,
};
pub use saliency::{SaliencyBox, SaliencySource, SaliencySourceAbi_TO};
pub use target::Target;
pub use tensor::{RTensor, TensorRef};

/// The `abi_stable`, `inventory`, `tch` and `toml` crates as `sat-core` uses them, so
/// plugins build against exactly the same versions.
pub use abi_stable;
pub use inventory;
pub use tch;
pub use toml;

/// Version of this crate, recorded in every plugin library.
pub const SAT_CORE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Version of `tch` this crate is built with (pinned exactly in the workspace).
pub const TCH_VERSION: &str = "0.26.0";
/// Version of libtorch this crate was compiled against (read by the build script).
pub const LIBTORCH_VERSION: &str = env!("SAT_LIBTORCH_VERSION");
