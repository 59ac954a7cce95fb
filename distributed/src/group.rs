//! The process group: a c10d TCPStore plus one c10d backend, and the collectives the
//! trainer needs.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tch::Tensor;

use crate::ffi::{self, DeviceArg};
use crate::{DifferentiableSum, Error, GlooDevice, Launch, Result};

/// Key prefix of the backend's own rendezvous keys in the store (after the attempt's).
const PG_PREFIX: &str = "pg/";
/// Key prefix of [`ProcessGroup::store_set`]/[`ProcessGroup::store_get`] keys.
const USER_PREFIX: &str = "user/";
/// Key prefix of [`ProcessGroup::exchange_digest`] keys.
const EXCHANGE_PREFIX: &str = "exchange/";
/// Key prefix of the rendezvous of [`ProcessGroup::differentiable_sum`]'s backends.
const SUM_PREFIX: &str = "sum/";

/// The store namespace of this attempt: `sat/attempt_<n>/`, `n` being torchrun's
/// `TORCHELASTIC_RESTART_COUNT` (0 without it). Under torchrun the store is the agent's
/// (`TORCHELASTIC_USE_AGENT_STORE`) and outlives the workers; restarted workers must not
/// read their predecessors' keys (torch's `init_process_group` keys by attempt likewise).
fn attempt_namespace() -> String {
    let n: u64 = std::env::var("TORCHELASTIC_RESTART_COUNT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    format!("sat/attempt_{n}/")
}

/// This process's TCPStore: a client of torchrun's agent's store (nothing bound), or
/// rank 0's server (on the loopback address alone when `MASTER_ADDR` is one, else on
/// every interface, c10d's default), or a client of rank 0's.
fn connect_store(
    launch: &Launch,
    world_size: i32,
    timeout_ms: i64,
) -> std::result::Result<ffi::Store, String> {
    let role = if !launch.serves_store() {
        ffi::StoreRole::Client
    } else if let Some(ip) = launch.store_bind_address() {
        let addr = std::net::SocketAddr::new(ip, launch.master_port);
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("binding the store's socket to {addr}: {e}"))?;
        ffi::StoreRole::ServerOn(listener)
    } else {
        ffi::StoreRole::Server
    };
    ffi::Store::new(
        &launch.master_addr,
        launch.master_port,
        role,
        world_size,
        timeout_ms,
    )
}

/// A c10d communication backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Gloo: CPU tensors, TCP.
    Gloo,
    /// NCCL: CUDA tensors.
    Nccl,
}

impl Backend {
    /// The backend's name as torch spells it (`gloo`, `nccl`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build has the backend compiled in.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Gloo => cfg!(sat_gloo) && ffi::has_gloo(),
            Backend::Nccl => cfg!(sat_nccl) && ffi::has_nccl(),
        }
    }

    /// Why the build left the backend out, or `"compiled in"`.
    pub fn build_status(self) -> &'static str {
        match self {
            Backend::Gloo => env!("SAT_C10D_GLOO_STATUS"),
            Backend::Nccl => env!("SAT_C10D_NCCL_STATUS"),
        }
    }

    fn code(self) -> i32 {
        match self {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        }
    }

    fn unavailable(self) -> Error {
        let hint = match self {
            Backend::Gloo => format!("install libgloo-dev and rebuild ({})", self.build_status()),
            Backend::Nccl => self.build_status().to_owned(),
        };
        Error::Unavailable {
            backend: self,
            hint,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "Gloo",
            Backend::Nccl => "NCCL",
        })
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(Error::InvalidArgument(format!(
                "unknown backend {other:?} (expected gloo or nccl)"
            ))),
        }
    }
}

/// A joined process group. Collectives must be called in the same order on every rank;
/// tensors are updated in place (their storage is shared with the caller's handle).
///
/// Every blocking call is bounded by the group's timeout: a rank that never joins or
/// dies makes the others fail with [`Error::C10d`] (which names the timeout), never hang.
/// `ProcessGroup` is `Send` but not `Sync`.
pub struct ProcessGroup {
    // Dropped in this order: the backend, then the store it rendezvoused through.
    group: ffi::Group,
    store: ffi::Store,
    rank: usize,
    world_size: usize,
    backend: Backend,
    timeout: Duration,
    exchanges: Cell<u64>,
    namespace: String,
    gloo_device: GlooDevice,
    sums: Cell<u64>,
}

impl fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProcessGroup {
    /// Joins the group: every rank connects to the TCPStore at `MASTER_ADDR:MASTER_PORT`
    /// — torchrun's agent's when it shares its store (every rank a client, as torch's
    /// `_create_c10d_store` does), else rank 0's, which rank 0 serves and where it waits
    /// for the others; then the backend rendezvouses through the store. `timeout`
    /// bounds every step and every later collective.
    pub fn new(launch: &Launch, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        if !backend.is_available() {
            return Err(backend.unavailable());
        }
        let timeout_ms = i64::try_from(timeout.as_millis())
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "timeout {timeout:?} must be between 1 ms and i64::MAX ms"
                ))
            })?;
        let (rank, world_size) = (launch.rank, launch.world_size);
        let (rank_c, world_c) = match (i32::try_from(rank), i32::try_from(world_size)) {
            (Ok(r), Ok(w)) if r < w => (r, w),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "rank {rank} / world size {world_size} out of range"
                )))
            }
        };
        let fail = |op: &'static str, message: String| Error::C10d {
            op,
            rank,
            world_size,
            timeout,
            message,
        };

        log::debug!("c10d: joining {launch} with {backend}, timeout {timeout:?}");
        let store = connect_store(launch, world_c, timeout_ms).map_err(|m| {
            let role = if launch.serves_store() {
                "serving"
            } else {
                "connecting to"
            };
            fail(
                "TCPStore rendezvous",
                format!("{role} {}:{}: {m}", launch.master_addr, launch.master_port),
            )
        })?;
        let device = match &launch.gloo_device {
            GlooDevice::Hostname(h) => DeviceArg::Hostname(h),
            GlooDevice::Interface(i) => DeviceArg::Interface(i),
            GlooDevice::Default => DeviceArg::Default,
        };
        let namespace = attempt_namespace();
        let group = ffi::Group::new(
            &store,
            &format!("{namespace}{PG_PREFIX}"),
            backend.code(),
            device,
            rank_c,
            world_c,
            timeout_ms,
        )
        .map_err(|m| fail("process group creation", format!("{backend}: {m}")))?;
        log::info!("c10d: joined {launch} ({backend})");
        Ok(ProcessGroup {
            group,
            store,
            rank,
            world_size,
            backend,
            timeout,
            exchanges: Cell::new(0),
            namespace,
            gloo_device: launch.gloo_device.clone(),
            sums: Cell::new(0),
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

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The timeout bounding every blocking call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn fail(&self, op: &'static str, message: String) -> Error {
        Error::C10d {
            op,
            rank: self.rank,
            world_size: self.world_size,
            timeout: self.timeout,
            message,
        }
    }

    /// Sums `tensor` (dense, contiguous; on the CPU for Gloo, CUDA for NCCL) over all
    /// ranks, in place.
    pub fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()> {
        self.group
            .all_reduce_sum(tensor)
            .map_err(|m| self.fail("all_reduce_sum", m))
    }

    /// Averages a floating-point `tensor` over all ranks, in place (sum, then divide).
    pub fn all_reduce_mean(&self, tensor: &Tensor) -> Result<()> {
        if !tensor.f_is_floating_point()? {
            return Err(Error::InvalidArgument(format!(
                "all_reduce_mean needs a floating-point tensor, got {:?}",
                tensor.f_kind()?
            )));
        }
        self.all_reduce_sum(tensor)?;
        let mut alias = tensor.shallow_clone();
        let _ = alias.f_div_scalar_(self.world_size as f64)?;
        Ok(())
    }

    /// Overwrites `tensor` on every rank with rank `root`'s, in place.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        if root >= self.world_size {
            return Err(Error::InvalidArgument(format!(
                "broadcast root {root} is not below the world size {}",
                self.world_size
            )));
        }
        // root < world_size, which fits in i32 (checked in `new`).
        self.group
            .broadcast(tensor, root as i32)
            .map_err(|m| self.fail("broadcast", m))
    }

    /// Every rank's `tensor`, by rank (each result has `tensor`'s shape and kind).
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let outputs = (0..self.world_size)
            .map(|_| tensor.f_empty_like())
            .collect::<Result<Vec<_>, _>>()?;
        self.group
            .all_gather(&outputs, tensor)
            .map_err(|m| self.fail("all_gather", m))?;
        Ok(outputs)
    }

    /// Waits until every rank reaches the barrier.
    pub fn barrier(&self) -> Result<()> {
        self.group.barrier().map_err(|m| self.fail("barrier", m))
    }

    /// A differentiable all-reduce (sum) on a backend of its own, joined now: a
    /// collective, so every rank calls it at the same point. Its collectives are matched
    /// only with each other, never with this group's. See [`DifferentiableSum`].
    pub fn differentiable_sum(&self) -> Result<DifferentiableSum> {
        let round = self.sums.get();
        self.sums.set(round + 1);
        let device = match &self.gloo_device {
            GlooDevice::Hostname(h) => DeviceArg::Hostname(h),
            GlooDevice::Interface(i) => DeviceArg::Interface(i),
            GlooDevice::Default => DeviceArg::Default,
        };
        // Both fit: checked in `new`.
        let (rank, world_size) = (self.rank as i32, self.world_size as i32);
        let timeout_ms = self.timeout.as_millis() as i64;
        let group = ffi::Group::new(
            &self.store,
            &format!("{}{SUM_PREFIX}{round}/", self.namespace),
            self.backend.code(),
            device,
            rank,
            world_size,
            timeout_ms,
        )
        .map_err(|m| self.fail("differentiable_sum", format!("{}: {m}", self.backend)))?;
        let sum = ffi::Sum::new(group).map_err(|m| self.fail("differentiable_sum", m))?;
        Ok(DifferentiableSum::new(
            sum,
            self.rank,
            self.world_size,
            self.timeout,
        ))
    }

    /// Sets `key` to `value` in the shared store (keys live in a namespace of their own).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.store
            .set(&format!("{}{USER_PREFIX}{key}", self.namespace), value)
            .map_err(|m| self.fail("store_set", m))
    }

    /// The value of `key` in the shared store, waiting up to the timeout for a rank to set it.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        self.store
            .get(&format!("{}{USER_PREFIX}{key}", self.namespace))
            .map_err(|m| self.fail("store_get", m))
    }

    /// Publishes this rank's `digest` and returns every rank's, by rank. All ranks must
    /// call it the same number of times (each call is a fresh round).
    pub fn exchange_digest(&self, digest: &str) -> Result<Vec<String>> {
        let round = self.exchanges.get();
        self.exchanges.set(round + 1);
        let key = |rank: usize| format!("{}{EXCHANGE_PREFIX}{round}/{rank}", self.namespace);
        self.store
            .set(&key(self.rank), digest.as_bytes())
            .map_err(|m| self.fail("exchange_digest", m))?;
        (0..self.world_size)
            .map(|r| {
                let bytes = self
                    .store
                    .get(&key(r))
                    .map_err(|m| self.fail("exchange_digest", m))?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect()
    }

    /// The shim's group, for the crate's other wrappers ([`crate::GradientReducer`]).
    pub(crate) fn raw_group(&self) -> &ffi::Group {
        &self.group
    }

    /// An [`Error::C10d`] of this rank for `op`.
    pub(crate) fn failure(&self, op: &'static str, message: String) -> Error {
        self.fail(op, message)
    }

    /// [`exchange_digest`](Self::exchange_digest), then [`Error::DigestMismatch`] unless
    /// every rank holds the same digest.
    pub fn ensure_same_digest(&self, digest: &str) -> Result<()> {
        let values = self.exchange_digest(digest)?;
        if values.iter().all(|v| v == digest) {
            Ok(())
        } else {
            Err(Error::DigestMismatch { values })
        }
    }
}
