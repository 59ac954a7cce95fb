//! The process group as the trainer sees it: who this process is among the ranks of a
//! data-parallel run, and the few things the trainer asks of the others.
//!
//! A run launched by torchrun or Slurm (see [`sat_distributed::Launch`]) joins a c10d
//! process group ([`Ranks::join`]); a plain run is [`Ranks::single`], and every method
//! below is then a no-op, so the single-process run is today's, unchanged. What a
//! distributed run does, and where:
//!
//! - **Sharding** ([`shard`], in `data::epoch`): each epoch's seeded permutation is split as torch's
//!   `DistributedSampler` (`drop_last = False`) splits it: padded by wrapping around to a
//!   multiple of the world size, then rank `r` takes positions `r, r + W, r + 2W, …`. Every
//!   rank has the same number of samples and batches; a global batch of `W × batch_size`
//!   is the single-process batch of that size, shared out.
//! - **Gradients** ([`AllReduceMean`], the trainer's [`GradientSync`]): the optimiser's
//!   flat gradient summed over the ranks and divided by the world size, timed. With
//!   `[distributed] overlap` (the default) in buckets of `bucket_mb`, all-reduced from
//!   autograd hooks while the backward pass runs ([`sat_distributed::GradientReducer`],
//!   attached by [`Ranks::synchronize_state`]); else in one all-reduce after it.
//! - **State** ([`Ranks::synchronize_state`]): parameters, buffers, optimiser state and
//!   loss scale are broadcast from rank 0 at the start and after a resume.
//! - **Figures** ([`Ranks::sum`]): epoch totals and evaluation counts are summed, so the
//!   figures rank 0 records are those of all ranks.
//! - **Agreement** ([`Ranks::ensure_same_config`], [`Ranks::share_path`]): the resolved
//!   configs' digests must match; rank 0 makes the run directory and tells the others.
use crate::config::{DistributedConfig, RunConfig};
use crate::data::epoch::Fnv1a;
use crate::train::optimizer::{LossScale, Optimizer};
use crate::train::step::{GradientSync, TrainingStep};
use anyhow::{bail, Context};
use sat_distributed::{Backend, GradientReducer, Launch, ProcessGroup};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tch::{nn, Device, Tensor};

/// The environment variable torchrun sets to the number of times it restarted the
/// workers (`--max-restarts`); see [`elastic_restart`].
pub const RESTART_COUNT: &str = "TORCHELASTIC_RESTART_COUNT";

/// This process among the ranks of a run: rank, world size and, when there are several,
/// the process group.
pub struct Ranks {
    rank: usize,
    world_size: usize,
    group: Option<Rc<ProcessGroup>>,
    timing: Rc<SyncTiming>,
    /// The bucket size in bytes when `[distributed] overlap` is on.
    overlap: Option<usize>,
    /// The overlapped reducer, once [`Ranks::synchronize_state`] attached it; shared with
    /// the [`AllReduceMean`] of [`Ranks::gradient_sync`].
    reducer: Rc<RefCell<Option<GradientReducer>>>,
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranks")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

/// Time spent in the gradient all-reduce since the last [`Ranks::take_sync_time`].
#[derive(Default)]
struct SyncTiming {
    seconds: Cell<f64>,
    calls: Cell<u64>,
}

impl Ranks {
    /// One process: rank 0 of 1.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            group: None,
            timing: Rc::default(),
            overlap: None,
            reducer: Rc::default(),
        }
    }

    /// Joins the process group of `launch` with `[distributed]`'s backend and timeout
    /// (`auto`: NCCL for a CUDA `device`, Gloo otherwise).
    pub fn join(
        launch: &Launch,
        config: &DistributedConfig,
        device: Device,
    ) -> anyhow::Result<Self> {
        let backend = backend(config, device)?;
        let timeout = timeout(config)?;
        let group = ProcessGroup::new(launch, backend, timeout).with_context(|| {
            format!(
                "joining the process group as rank {} of {}",
                launch.rank, launch.world_size
            )
        })?;
        Ok(Self {
            rank: launch.rank,
            world_size: launch.world_size,
            group: Some(Rc::new(group)),
            timing: Rc::default(),
            overlap: config.overlap.then(|| bucket_bytes(config.bucket_mb)),
            reducer: Rc::default(),
        })
    }

    /// This process's rank (0 in a single process).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes (1 in a single process).
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The ranks of this process under `launch` (one process without a launch): joins
    /// the group and refuses a config that differs from the other ranks'.
    pub fn for_launch(
        launch: Option<&Launch>,
        config: &RunConfig,
        device: Device,
    ) -> anyhow::Result<Self> {
        match launch {
            Some(l) => {
                let ranks = Self::join(l, &config.distributed, device)?;
                ranks.ensure_same_config(config)?;
                Ok(ranks)
            }
            None => Ok(Self::single()),
        }
    }

    /// Whether this process writes the run directory (rank 0).
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// Whether there are other ranks.
    pub fn is_distributed(&self) -> bool {
        self.group.is_some()
    }

    /// The process group (`None` in one process), for what issues collectives of its
    /// own: synchronised BatchNorm's sums ([`crate::train::build_network_for`]).
    pub fn process_group(&self) -> Option<&ProcessGroup> {
        self.group.as_deref()
    }

    /// What the trainer calls where the gradients are final: nothing in one process,
    /// [`AllReduceMean`] with several (bucketed and overlapped once
    /// [`Ranks::synchronize_state`] attached the reducer, when `[distributed] overlap`).
    pub fn gradient_sync(&self) -> Box<dyn GradientSync> {
        match &self.group {
            None => Box::new(crate::train::step::SingleProcess),
            Some(group) => Box::new(AllReduceMean {
                group: group.clone(),
                timing: self.timing.clone(),
                reducer: self.reducer.clone(),
                overlap: self.overlap,
                steps: 0,
            }),
        }
    }

    /// With `[distributed] overlap`, registers the bucketed reducer's hooks on the
    /// parameters of `optimizer` (replacing an earlier reducer), so that the next
    /// backward passes all-reduce their buckets as they finish; nothing otherwise or in
    /// one process. A collective setup: every rank calls it at the same point.
    pub fn attach_reducer(&self, optimizer: &Optimizer) -> anyhow::Result<()> {
        let (Some(group), Some(bytes)) = (&self.group, self.overlap) else {
            return Ok(());
        };
        // The old reducer's hooks go first: a parameter takes one reducer's hook.
        self.reducer.borrow_mut().take();
        let params: Vec<Tensor> = optimizer
            .parameters()
            .iter()
            .map(|(_, p)| p.shallow_clone())
            .collect();
        let reducer = GradientReducer::new(group, &params, optimizer.flat_gradient(), bytes)
            .map_err(|e| self.explain(e.into(), "setting up the overlapped gradient all-reduce"))?;
        if self.is_writer() {
            log::info!(
                "data-parallel: gradient all-reduce overlapped with backward, {} bucket(s) of at most {} ({} of gradient)",
                reducer.bucket_count(),
                in_bytes(bytes as f64),
                in_bytes(optimizer.flat_gradient().numel() as f64 * 4.0)
            );
        }
        *self.reducer.borrow_mut() = Some(reducer);
        Ok(())
    }

    /// Seconds spent in the gradient all-reduce and its calls since the last call
    /// (`None` in one process).
    pub fn take_sync_time(&self) -> Option<(f64, u64)> {
        self.group.as_ref()?;
        let taken = (self.timing.seconds.get(), self.timing.calls.get());
        self.timing.seconds.set(0.0);
        self.timing.calls.set(0);
        Some(taken)
    }

    /// Refuses to go on unless every rank resolved the same configuration (its TOML's
    /// digest, exchanged through the store); the error names the ranks that differ.
    pub fn ensure_same_config(&self, config: &RunConfig) -> anyhow::Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let mut digest = Fnv1a::default();
        digest.write(config.to_toml().as_bytes());
        let digest = digest.hex();
        let values = group
            .exchange_digest(&digest)
            .map_err(|e| self.explain(e.into(), "exchanging the config digests"))?;
        let differing: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| *v != &values[0])
            .map(|(r, v)| format!("rank {r} ({v})"))
            .collect();
        if !differing.is_empty() {
            bail!(
                "the ranks resolved different configurations: rank 0 has digest {}, but {}; every rank must be started with the same config file and --set overrides",
                values[0],
                differing.join(", ")
            );
        }
        log::debug!("config digest {digest} agreed by {} ranks", self.world_size);
        Ok(())
    }

    /// Rank 0's `path` on every rank (rank 0 passes `Some`, the others `None`): rank 0
    /// makes the run directory, the others learn its path through the store.
    pub fn share_path(&self, key: &str, path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let Some(group) = &self.group else {
            return path.context("a single process must know the path itself");
        };
        if let Some(path) = path {
            group
                .store_set(key, path.to_string_lossy().as_bytes())
                .map_err(|e| self.explain(e.into(), "sharing the run directory"))?;
            Ok(path)
        } else {
            let bytes = group
                .store_get(key)
                .map_err(|e| self.explain(e.into(), "waiting for rank 0's run directory"))?;
            Ok(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
        }
    }

    /// `values` summed over the ranks (float64, through `device`: the CPU for Gloo,
    /// CUDA for NCCL).
    pub fn sum(&self, values: &[f64], device: Device) -> anyhow::Result<Vec<f64>> {
        let Some(group) = &self.group else {
            return Ok(values.to_vec());
        };
        let device = match group.backend() {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => device,
        };
        let t = Tensor::from_slice(values).to_device(device);
        group
            .all_reduce_sum(&t)
            .map_err(|e| self.explain(e.into(), "summing figures over the ranks"))?;
        Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?)
    }

    /// Every rank's `values`, concatenated in rank order, on every rank (through two
    /// [`sum`](Self::sum)s: the lengths, then each rank's values in its own slot of a
    /// zeroed buffer, so they come back exactly).
    pub fn gather(&self, values: &[f64], device: Device) -> anyhow::Result<Vec<f64>> {
        if self.group.is_none() {
            return Ok(values.to_vec());
        }
        let mut lengths = vec![0.0; self.world_size];
        lengths[self.rank] = values.len() as f64;
        let lengths = self.sum(&lengths, device)?;
        let offset = lengths[..self.rank].iter().sum::<f64>() as usize;
        let total = lengths.iter().sum::<f64>() as usize;
        if total == 0 {
            return Ok(Vec::new());
        }
        let mut all = vec![0.0; total];
        all[offset..offset + values.len()].copy_from_slice(values);
        self.sum(&all, device)
    }

    /// Makes every rank's buffers (the variables that are not trained: BatchNorm's
    /// running statistics) rank 0's, as torch DDP's `broadcast_buffers` does before each
    /// forward pass. Called before every training step and before the evaluation, so every
    /// rank attacks and evaluates the model rank 0 checkpoints, and a resumed run (whose
    /// ranks all start from rank 0's state) computes what the uninterrupted run did. The
    /// float32 buffers go in one broadcast; others one each. Nothing in one process.
    pub fn broadcast_buffers(&self, vs: &nn::VarStore) -> anyhow::Result<()> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let mut buffers: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        if buffers.is_empty() {
            return Ok(());
        }
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let fail =
            |e: sat_distributed::Error| self.explain(e.into(), "broadcasting rank 0's buffers");
        let on_backend = |t: &Tensor| match group.backend() {
            Backend::Gloo => t.to_device(Device::Cpu),
            Backend::Nccl => t.shallow_clone(),
        };
        let (floats, others): (Vec<_>, Vec<_>) = buffers
            .iter()
            .partition(|(_, t)| t.kind() == tch::Kind::Float);
        if !floats.is_empty() {
            let flat = Tensor::cat(
                &floats
                    .iter()
                    .map(|(_, t)| on_backend(t).reshape([-1]))
                    .collect::<Vec<_>>(),
                0,
            );
            group.broadcast(&flat, 0).map_err(fail)?;
            let mut offset = 0;
            tch::no_grad(|| {
                for (_, t) in &floats {
                    let n = t.numel() as i64;
                    let part = flat.narrow(0, offset, n).view(t.size().as_slice());
                    t.shallow_clone().copy_(&part);
                    offset += n;
                }
            });
        }
        for (_, t) in others {
            let buffer = on_backend(t).contiguous().copy();
            group.broadcast(&buffer, 0).map_err(fail)?;
            tch::no_grad(|| t.shallow_clone().copy_(&buffer));
        }
        Ok(())
    }

    /// Makes every rank's model, optimiser and loss scale rank 0's (broadcast: every
    /// variable of `vs` by name, the optimiser's state, the loss scale) and returns rank
    /// 0's `epochs_done`. Called at the start and after a resume, so only rank 0 needs to
    /// read the state file. Then attaches the overlapped reducer
    /// ([`Ranks::attach_reducer`]) to the optimiser's parameters.
    pub fn synchronize_state(
        &self,
        vs: &nn::VarStore,
        step: &mut TrainingStep,
        epochs_done: u32,
    ) -> anyhow::Result<u32> {
        let Some(group) = &self.group else {
            return Ok(epochs_done);
        };
        let fail =
            |e: sat_distributed::Error| self.explain(e.into(), "broadcasting rank 0's state");
        let device = |t: &Tensor| match group.backend() {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => t.device(),
        };
        // Through a contiguous copy on the backend's device, then back in place.
        let broadcast = |t: &Tensor| -> anyhow::Result<()> {
            let buffer = t.to_device(device(t)).contiguous();
            let buffer = if buffer.data_ptr() == t.data_ptr() {
                buffer.copy()
            } else {
                buffer
            };
            group.broadcast(&buffer, 0).map_err(fail)?;
            tch::no_grad(|| t.shallow_clone().copy_(&buffer));
            Ok(())
        };
        // First the scalars, so every rank knows how many optimiser buffers to expect.
        let scalars = Tensor::from_slice(&[
            step.scaler.scale,
            f64::from(step.scaler.good_steps),
            f64::from(epochs_done),
            step.optimizer.buffer_count() as f64,
        ]);
        broadcast(&scalars)?;
        let v = Vec::<f64>::try_from(&scalars)?;
        step.scaler = LossScale {
            scale: v[0],
            good_steps: v[1] as u32,
        };
        step.optimizer.ensure_buffers(v[3] as usize);
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t) in &variables {
            broadcast(t)?;
        }
        let state = step.optimizer.state();
        for (_, t) in &state {
            broadcast(t)?;
        }
        let named: HashMap<String, Tensor> = state.into_iter().collect();
        step.optimizer
            .load_state(&named)
            .map_err(|e| anyhow::anyhow!("rank 0's optimiser state: {e}"))?;
        self.attach_reducer(&step.optimizer)?;
        Ok(v[2] as u32)
    }

    /// A collective's error, said plainly: which operation, this rank, and which rank
    /// is likely at fault (with two ranks, the other one).
    pub fn explain(&self, err: anyhow::Error, what: &str) -> anyhow::Error {
        let others: Vec<String> = (0..self.world_size)
            .filter(|&r| r != self.rank)
            .map(|r| r.to_string())
            .collect();
        let culprit = match others.as_slice() {
            [one] => format!("rank {one} died, stalled or was stopped"),
            _ => format!(
                "one of ranks {} died, stalled or was stopped",
                others.join(", ")
            ),
        };
        let timeout = self
            .group
            .as_ref()
            .map(|g| g.timeout().as_secs_f64())
            .unwrap_or_default();
        err.context(format!(
            "rank {} of {}: {what} failed: {culprit} (or did not answer within [distributed] timeout_seconds = {timeout})",
            self.rank, self.world_size
        ))
    }

    /// The libtorch seed of `purpose` in `epoch` for this rank: the single-process seed on
    /// rank 0, a distinct one on every other rank (attack and saliency draws must differ
    /// between the ranks' local batches).
    pub fn torch_seed(&self, seed: u64, purpose: crate::data::rng::Purpose, epoch: u32) -> i64 {
        let base = crate::data::rng::torch_seed(seed, purpose, epoch);
        if self.rank == 0 {
            base
        } else {
            (crate::data::rng::SplitMix::new(base as u64, 0xD15C_0000 + self.rank as u64)
                .next_u64()
                >> 1) as i64
        }
    }
}

/// The data-parallel [`GradientSync`]: the flat gradient summed over the ranks, then
/// divided by their number (with mixed precision this is the scaled gradient, as
/// [`GradientSync`] says). With the overlapped reducer attached, the hooks have launched
/// most buckets during backward and this waits for them (and launches the rest); without
/// it, one all-reduce of the whole flat gradient. The time spent here — with overlap, the
/// communication the backward pass did not hide — is added up for the epoch's figures.
pub struct AllReduceMean {
    group: Rc<ProcessGroup>,
    timing: Rc<SyncTiming>,
    reducer: Rc<RefCell<Option<GradientReducer>>>,
    overlap: Option<usize>,
    steps: u64,
}

impl GradientSync for AllReduceMean {
    fn synchronize(&mut self, flat_gradient: &Tensor) -> anyhow::Result<()> {
        let start = Instant::now();
        let result = match self.reducer.borrow_mut().as_mut() {
            Some(reducer) => tch::no_grad(|| reducer.finalize(flat_gradient)).map(|f| {
                if self.steps < 2 && self.group.rank() == 0 {
                    log::debug!(
                        "step {}: {} of {} gradient buckets launched under backward (before its last gradient)",
                        self.steps + 1,
                        f.launched_during_backward,
                        f.buckets
                    );
                }
            }),
            None => tch::no_grad(|| self.group.all_reduce_mean(flat_gradient)),
        };
        self.steps += 1;
        self.timing
            .seconds
            .set(self.timing.seconds.get() + start.elapsed().as_secs_f64());
        self.timing.calls.set(self.timing.calls.get() + 1);
        result.map_err(|e| {
            let ranks = Ranks {
                rank: self.group.rank(),
                world_size: self.group.world_size(),
                group: Some(self.group.clone()),
                timing: self.timing.clone(),
                overlap: self.overlap,
                reducer: self.reducer.clone(),
            };
            ranks.explain(e.into(), "the gradient all-reduce")
        })
    }
}

/// `bytes` for a log line: `512 B`, `12.5 KiB`, `25.0 MiB`.
fn in_bytes(bytes: f64) -> String {
    match bytes {
        b if b < 1024.0 => format!("{b:.0} B"),
        b if b < 1024.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
    }
}

/// `[distributed] bucket_mb` in bytes (2^20 bytes a megabyte, as DDP's `bucket_cap_mb`),
/// at least one.
pub fn bucket_bytes(bucket_mb: f64) -> usize {
    ((bucket_mb * (1u64 << 20) as f64).round() as usize).max(1)
}

pub use crate::data::epoch::{shard, shard_len};

/// The c10d backend for `device` under `[distributed] backend`.
pub fn backend(config: &DistributedConfig, device: Device) -> anyhow::Result<Backend> {
    match config.backend.trim() {
        "auto" => Ok(if device.is_cuda() { Backend::Nccl } else { Backend::Gloo }),
        "gloo" => Ok(Backend::Gloo),
        "nccl" if device.is_cuda() => Ok(Backend::Nccl),
        "nccl" => bail!("[distributed] backend = \"nccl\" needs a CUDA device, but the device is {device:?}; use \"gloo\" or \"auto\""),
        other => bail!("[distributed] backend: unknown backend `{other}`; accepted: auto, gloo, nccl"),
    }
}

/// `[distributed] timeout_seconds`, checked (1 to 86400).
pub fn timeout(config: &DistributedConfig) -> anyhow::Result<Duration> {
    match config.timeout_seconds {
        1..=86_400 => Ok(Duration::from_secs(config.timeout_seconds)),
        other => bail!("[distributed] timeout_seconds = {other} is out of range (1 to 86400)"),
    }
}

/// The device of a rank: `device = "auto"` is `cuda:LOCAL_RANK` when CUDA is present
/// (the rank's GPU on its node; `cuda:0` when the launcher gave each process one GPU
/// through `CUDA_VISIBLE_DEVICES`), else the CPU; any other value as in one process.
pub fn device(config: &RunConfig, launch: Option<&Launch>) -> anyhow::Result<Device> {
    if let (Some(launch), "auto") = (launch, config.device.as_str()) {
        if tch::Cuda::is_available() {
            let local = launch.local_rank.unwrap_or(0);
            let count = tch::Cuda::device_count() as usize;
            let index = if count == 1 { 0 } else { local };
            if index >= count {
                bail!("device = \"auto\": local rank {local} but only {count} CUDA device(s) on this node; start at most {count} processes per node");
            }
            let mut c = config.clone();
            c.device = format!("cuda:{index}");
            return crate::device::open(&c);
        }
    }
    crate::device::open(config)
}

/// torchrun's restart count (`TORCHELASTIC_RESTART_COUNT`), when it restarted the
/// workers (greater than 0).
pub fn elastic_restart() -> Option<u32> {
    std::env::var(RESTART_COUNT)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &u32| n > 0)
}

/// What identifies a torchrun job across its restarts: `TORCHELASTIC_RUN_ID` and the
/// store's address, written into the run directory (file [`LAUNCH_FILE`]) by rank 0.
pub fn elastic_identity(launch: &Launch) -> Option<String> {
    let run_id = std::env::var("TORCHELASTIC_RUN_ID").ok()?;
    Some(format!(
        "{run_id} {}:{} {}",
        launch.master_addr, launch.master_port, launch.world_size
    ))
}

/// The file in a run directory naming the torchrun job that made it.
pub const LAUNCH_FILE: &str = "torchelastic.txt";

/// The run directory under `runs_dir` named `name` or `name-N` that the torchrun job
/// `identity` made and that holds a state file, the most recently modified first.
pub fn find_elastic_run(runs_dir: &std::path::Path, name: &str, identity: &str) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(runs_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == name
                    || n.strip_prefix(name)
                        .and_then(|r| r.strip_prefix('-'))
                        .is_some_and(|k| k.parse::<u32>().is_ok())
            })
        })
        .filter(|p| {
            sat_input::read_text(&p.join(LAUNCH_FILE), sat_input::Kind::Report)
                .is_ok_and(|s| s.trim() == identity)
                && p.join(crate::train::checkpoint::STATE_FILE).exists()
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DistributedSampler: pad by wrapping, then stride; the shards together cover the
    /// order (plus the padding) and are equally long.
    #[test]
    fn shards_pad_by_wrapping_and_stride() {
        let order: Vec<i64> = vec![9, 8, 7, 6, 5];
        assert_eq!(shard(&order, 0, 1), order);
        assert_eq!(shard(&order, 0, 2), vec![9, 7, 5]);
        assert_eq!(shard(&order, 1, 2), vec![8, 6, 9]);
        assert_eq!(shard(&order, 2, 3), vec![7, 9]);
        for world in 1..7 {
            let mut all: Vec<i64> = (0..world).flat_map(|r| shard(&order, r, world)).collect();
            assert!(all.iter().all(|i| order.contains(i)));
            assert_eq!(all.len(), shard_len(order.len(), world) * world);
            all.sort();
            all.dedup();
            assert_eq!(all.len(), order.len());
        }
    }

    /// A global batch of W × B is the single-process batch of that size, shared out.
    #[test]
    fn global_batches_are_the_single_process_batches() {
        let order: Vec<i64> = (0..12).rev().collect();
        let (a, b) = (shard(&order, 0, 2), shard(&order, 1, 2));
        for k in 0..2 {
            let mut global: Vec<i64> = a[3 * k..3 * k + 3]
                .iter()
                .chain(&b[3 * k..3 * k + 3])
                .copied()
                .collect();
            let mut single = order[6 * k..6 * k + 6].to_vec();
            global.sort();
            single.sort();
            assert_eq!(global, single);
        }
    }

    #[test]
    fn backends_and_timeouts_are_checked() {
        let mut c = DistributedConfig::default();
        assert_eq!(backend(&c, Device::Cpu).unwrap(), Backend::Gloo);
        assert_eq!(backend(&c, Device::Cuda(0)).unwrap(), Backend::Nccl);
        c.backend = "nccl".into();
        assert!(backend(&c, Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("CUDA"));
        c.backend = "mpi".into();
        assert!(backend(&c, Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("accepted"));
        c.timeout_seconds = 0;
        assert!(timeout(&c).is_err());
        c.timeout_seconds = 5;
        assert_eq!(timeout(&c).unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn a_single_process_is_rank_0_of_1_and_changes_nothing() {
        let r = Ranks::single();
        assert!(r.is_writer() && !r.is_distributed());
        assert_eq!(r.sum(&[1.0, 2.0], Device::Cpu).unwrap(), vec![1.0, 2.0]);
        assert_eq!(r.gather(&[3.0, 0.5], Device::Cpu).unwrap(), vec![3.0, 0.5]);
        assert!(r.take_sync_time().is_none());
        use crate::data::rng::Purpose;
        assert_eq!(
            r.torch_seed(3, Purpose::Attacks, 1),
            crate::data::rng::torch_seed(3, Purpose::Attacks, 1)
        );
    }
}
