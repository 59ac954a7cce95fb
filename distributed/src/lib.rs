//! Data-parallel collectives for `sat-host` from PyTorch's own c10d.
//!
//! The libtorch that tch already links ships c10d: a `TCPStore` for rendezvous and the
//! Gloo (CPU) and NCCL (CUDA) process groups. A small C++ shim (`shim/c10d_shim.cpp`)
//! exposes the few calls the trainer needs as `extern "C"` functions that never let a
//! C++ exception escape; [`ProcessGroup`] wraps them. Nothing here implements a network
//! protocol or a reduction of its own.
//!
//! ```no_run
//! use std::time::Duration;
//! use sat_distributed::{Backend, Launch, ProcessGroup};
//!
//! # fn main() -> sat_distributed::Result<()> {
//! if let Some(launch) = Launch::from_env()? {
//!     let pg = ProcessGroup::new(&launch, Backend::Gloo, Duration::from_secs(60))?;
//!     pg.ensure_same_digest("config-sha256")?;
//!     let grads = tch::Tensor::ones([10], (tch::Kind::Float, tch::Device::Cpu));
//!     pg.all_reduce_mean(&grads)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Which backends a build has is decided by `build.rs` (see [`Backend::build_status`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod error;
mod ffi;
mod group;
mod launch;
mod reducer;
mod sum;

pub use error::{Error, Result};
pub use group::{Backend, ProcessGroup};
pub use launch::{GlooDevice, Launch, LaunchSource, StoreServer};
pub use reducer::{plan_buckets, Finalized, GradientReducer, FIRST_BUCKET_BYTES};
pub use sum::DifferentiableSum;
