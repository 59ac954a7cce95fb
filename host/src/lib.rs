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
pub mod interrupt;
pub mod logging;
pub mod plugins;
pub mod report;
pub mod train;

/// The datasets, their order and augmentation: the `sat-data` crate.
pub use sat_data as data;

/// Cases per property test of the readers and the config parser: `default`, or
/// `SAT_FUZZ_CASES` for a long fuzzing run (see docs/RELIABILITY.md).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("SAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
