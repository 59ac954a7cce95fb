//! `sat-host` as a library: what the binary and the tests use.
//!
//! [`commands`] sit on top, one module a subcommand; [`train`], [`eval`] and
//! [`distributed`] (the process group of a data-parallel run) use the rest;
//! [`config`], [`data`], [`plugins`] and [`report`] are the building blocks (the
//! configuration imports no other host module); [`device`] and [`logging`] are leaves.
// `#[sabi_trait]`-generated code from sat-core expands impls in anonymous consts.
#![allow(non_local_definitions)]

pub mod commands;
pub mod config;
pub mod device;
pub mod distributed;
pub mod eval;
#[cfg(test)]
mod hostile_inputs;
pub mod interrupt;
pub mod logging;
pub mod plugins;
pub mod report;
pub mod train;

/// The datasets, their order and augmentation: the `sat-data` crate.
pub use sat_data as data;

/// Cases per property test (see [`sat_data::fuzz_cases`]).
#[cfg(test)]
pub(crate) use sat_data::fuzz_cases;
