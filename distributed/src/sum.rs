//! A differentiable all-reduce: what synchronised BatchNorm needs in its forward and
//! backward passes (tch has no custom autograd functions; the shim's
//! `shim/autograd_sum.cpp` is one).

use std::fmt;
use std::time::Duration;

use tch::Tensor;

use crate::{ffi, Error, Result};

/// `y = Σ_ranks x_r` recorded in autograd: the gradient each rank receives for its `x_r`
/// is `Σ_ranks ∂L/∂y_r`, made by the same all-reduce in the backward pass (itself
/// differentiable, so a double backward works too).
///
/// It runs on a backend reserved for it (made by [`ProcessGroup::differentiable_sum`]),
/// so its collectives never interleave with the trainer's. Every rank must make the same
/// sums, forward and backward, in the same order: a rank that skips one makes the others
/// fail after the group's timeout. It is `Send` and `Sync` (the shim issues one
/// collective at a time), and tensors may be on the CPU or, with NCCL, CUDA (Gloo reduces
/// a CUDA tensor through a host copy).
///
/// [`ProcessGroup::differentiable_sum`]: crate::ProcessGroup::differentiable_sum
pub struct DifferentiableSum {
    sum: ffi::Sum,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

impl fmt::Debug for DifferentiableSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DifferentiableSum")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

impl DifferentiableSum {
    pub(crate) fn new(sum: ffi::Sum, rank: usize, world_size: usize, timeout: Duration) -> Self {
        Self {
            sum,
            rank,
            world_size,
            timeout,
        }
    }

    /// `tensor` summed over the ranks: a new tensor (contiguous, on `tensor`'s device, of
    /// its kind), attached to autograd when `tensor` requires a gradient. `tensor` is not
    /// modified.
    pub fn all_reduce(&self, tensor: &Tensor) -> Result<Tensor> {
        self.sum.apply(tensor).map_err(|message| Error::C10d {
            op: "differentiable all_reduce_sum",
            rank: self.rank,
            world_size: self.world_size,
            timeout: self.timeout,
            message,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }
}
