//! Errors of this crate.

use std::time::Duration;

use crate::Backend;

/// What can go wrong while launching or using a process group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A launch variable (torchrun or Slurm) is missing or malformed.
    #[error("distributed launch: {var}: {reason}")]
    Env {
        /// The environment variable at fault.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend was not compiled into this build.
    #[error("built without {backend}: {hint}")]
    Unavailable {
        /// The backend asked for.
        backend: Backend,
        /// How to get it, and why the build left it out.
        hint: String,
    },
    /// A c10d call failed: a peer that never joined or died, a timeout, a bad tensor.
    #[error("c10d {op} failed on rank {rank} of {world_size} (timeout {timeout:?}): {message}")]
    C10d {
        /// The operation (`TCPStore rendezvous`, `all_reduce_sum`, …).
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// The number of ranks.
        world_size: usize,
        /// The timeout in force (store and process group).
        timeout: Duration,
        /// c10d's own message.
        message: String,
    },
    /// The ranks hold different configuration digests.
    #[error("ranks disagree on the configuration digest: {}", describe_mismatch(.values))]
    DigestMismatch {
        /// Every rank's digest, by rank.
        values: Vec<String>,
    },
    /// An argument this crate refuses before calling c10d.
    #[error("{0}")]
    InvalidArgument(String),
    /// A tensor operation done on the Rust side failed.
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

fn describe_mismatch(values: &[String]) -> String {
    values
        .iter()
        .enumerate()
        .map(|(rank, v)| format!("rank {rank}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
