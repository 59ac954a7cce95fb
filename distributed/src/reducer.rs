//! Gradient all-reduce overlapped with the backward pass: the flat gradient in buckets,
//! each all-reduced as soon as its parameters' gradients are accumulated (torch DDP's
//! reducer, for a flat gradient whose parameters' gradients are views of it).
//!
//! [`plan_buckets`] cuts the parameters, from the last in flat order to the first (the
//! order a backward pass produces gradients in, roughly), into runs of at most a bucket's
//! bytes: each bucket is a contiguous slice of the flat gradient, reduced in place.
//! [`GradientReducer`] registers one post-accumulate-grad hook per parameter (in the C++
//! shim, `shim/reducer.cpp`); the hooks launch the buckets' asynchronous all-reduces in
//! bucket order while backward runs, and [`GradientReducer::finalize`] launches what the
//! hooks did not (parameters without a gradient this step), waits for all and divides by
//! the world size.

use std::ops::Range;
use std::time::Duration;

use tch::Tensor;

use crate::ffi;
use crate::{Error, ProcessGroup, Result};

/// DDP's first bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`, 1 MiB): small, so that the
/// first all-reduce starts early in the backward pass.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;

/// Buckets over parameters of `numels` elements of `element_bytes` each, in flat order:
/// runs of parameter indices, the first holding the *last* parameters, each closed once
/// it reaches `bucket_bytes` (the first once it reaches `first_bucket_bytes`, if
/// smaller), as DDP's `compute_bucket_assignment_by_size` closes them. Every parameter is
/// in exactly one bucket; a parameter larger than a bucket has one of its own. A zero
/// `bucket_bytes` puts each parameter in its own bucket.
pub fn plan_buckets(
    numels: &[usize],
    element_bytes: usize,
    bucket_bytes: usize,
    first_bucket_bytes: usize,
) -> Vec<Range<usize>> {
    let mut buckets = Vec::new();
    let mut end = numels.len();
    let mut bytes = 0usize;
    for i in (0..numels.len()).rev() {
        bytes = bytes.saturating_add(numels[i].saturating_mul(element_bytes));
        let cap = if buckets.is_empty() {
            bucket_bytes.min(first_bucket_bytes)
        } else {
            bucket_bytes
        };
        if bytes >= cap || i == 0 {
            buckets.push(i..end);
            end = i;
            bytes = 0;
        }
    }
    buckets
}

/// What one step's [`GradientReducer::finalize`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finalized {
    /// Buckets the hooks launched while some parameter still awaited its gradient: their
    /// all-reduce ran under the rest of the backward pass (a bucket launched by the last
    /// gradient's hook is not counted).
    pub launched_during_backward: usize,
    /// Buckets in all.
    pub buckets: usize,
}

/// Bucketed all-reduce of a flat gradient, launched from autograd hooks (see the
/// module's documentation). Dropping it removes the hooks. Every rank must build it
/// from the same parameters and bucket size, and run one backward pass per
/// [`finalize`](Self::finalize).
pub struct GradientReducer {
    raw: ffi::Reducer,
    buckets: usize,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

impl std::fmt::Debug for GradientReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientReducer")
            .field("buckets", &self.buckets)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

impl GradientReducer {
    /// A reducer for `params` (trainable leaves, in the order of `flat_gradient`, each
    /// one's gradient the view of `flat_gradient` at its place) with buckets of at most
    /// `bucket_bytes` (the first at most [`FIRST_BUCKET_BYTES`]). Refused when a
    /// gradient is not that view or a parameter already has a post-accumulate-grad hook.
    pub fn new(
        group: &ProcessGroup,
        params: &[Tensor],
        flat_gradient: &Tensor,
        bucket_bytes: usize,
    ) -> Result<GradientReducer> {
        let numels: Vec<usize> = params.iter().map(|p| p.numel()).collect();
        let element_bytes = flat_gradient.f_kind()?.elt_size_in_bytes();
        let plan = plan_buckets(&numels, element_bytes, bucket_bytes, FIRST_BUCKET_BYTES);
        let first: Vec<usize> = plan.iter().map(|r| r.start).collect();
        let count: Vec<usize> = plan.iter().map(|r| r.len()).collect();
        let raw = ffi::Reducer::new(group.raw_group(), params, flat_gradient, &first, &count)
            .map_err(|m| group.failure("gradient reducer", m))?;
        Ok(GradientReducer {
            raw,
            buckets: plan.len(),
            rank: group.rank(),
            world_size: group.world_size(),
            timeout: group.timeout(),
        })
    }

    /// The number of buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets
    }

    /// Ends the step's reduction: launches the buckets the hooks did not (in bucket
    /// order), waits for every bucket and divides `flat_gradient` — the optimiser's flat
    /// gradient now, normally the one the reducer was made with — by the world size.
    /// Also reports an error a hook met during the backward pass.
    pub fn finalize(&mut self, flat_gradient: &Tensor) -> Result<Finalized> {
        let launched = self
            .raw
            .finalize(flat_gradient)
            .map_err(|message| Error::C10d {
                op: "bucketed gradient all-reduce",
                rank: self.rank,
                world_size: self.world_size,
                timeout: self.timeout,
                message,
            })?;
        Ok(Finalized {
            launched_during_backward: launched,
            buckets: self.buckets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(plan: &[Range<usize>], n: usize) -> bool {
        let mut seen: Vec<usize> = plan.iter().flat_map(|r| r.clone()).collect();
        seen.sort_unstable();
        seen == (0..n).collect::<Vec<_>>() && plan.iter().all(|r| !r.is_empty())
    }

    #[test]
    fn buckets_run_from_the_last_parameter_and_close_at_the_cap() {
        // 4-byte elements: parameters of 40, 400, 4, 80, 8 bytes.
        let numels = [10, 100, 1, 20, 2];
        // One bucket when everything fits.
        assert_eq!(plan_buckets(&numels, 4, 10_000, 10_000), vec![0..5]);
        // Cap 50 bytes: [4]=8 → +[3]=88 ≥ 50 closes {3,4}; [2]=4 → +[1]=404 closes {1,2};
        // [0] alone.
        assert_eq!(plan_buckets(&numels, 4, 50, 50), vec![3..5, 1..3, 0..1]);
        // A smaller first bucket: the last parameter alone, then the cap.
        assert_eq!(plan_buckets(&numels, 4, 500, 8), vec![4..5, 0..4]);
        // Zero: one parameter a bucket.
        assert_eq!(
            plan_buckets(&numels, 4, 0, FIRST_BUCKET_BYTES),
            vec![4..5, 3..4, 2..3, 1..2, 0..1]
        );
        assert!(plan_buckets(&[], 4, 100, 100).is_empty());
    }

    #[test]
    fn every_parameter_is_in_exactly_one_bucket() {
        let numels: Vec<usize> = (0..37).map(|i| (i * 7919) % 1000 + 1).collect();
        for cap in [0, 1, 100, 4_000, 40_000, 1 << 30] {
            for first in [0, 64, FIRST_BUCKET_BYTES] {
                let plan = plan_buckets(&numels, 4, cap, first);
                assert!(covers(&plan, numels.len()), "cap {cap} first {first}");
                // Launch order runs from the end of the flat gradient to its start.
                assert!(plan.windows(2).all(|w| w[1].end == w[0].start));
            }
        }
    }
}
