//! The boundary with the C++ shim (`shim/c10d_shim.cpp`): the only module with `unsafe`.
//!
//! Every shim function returns NULL on success or a `malloc`'d error string that
//! [`take_error`] copies and frees; no C++ exception crosses into Rust (the shim catches
//! them all and its functions are `noexcept`). The safe wrappers here own the two shim
//! handles and report failures as the shim's plain message; `group.rs` adds the context.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::{PhantomData, PhantomPinned};
use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::ptr::{self, NonNull};

use tch::Tensor;

/// Opaque `sat_c10d_store` (a `c10::intrusive_ptr<c10d::Store>`).
#[repr(C)]
struct RawStore {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque `sat_c10d_group` (a `c10::intrusive_ptr<c10d::Backend>` and its store).
#[repr(C)]
struct RawGroup {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// Opaque `sat_c10d_reducer` (`shim/reducer.cpp`: buckets, hooks, pending works).
#[repr(C)]
struct RawReducer {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

extern "C" {
    fn sat_c10d_has_gloo() -> c_int;
    fn sat_c10d_has_nccl() -> c_int;
    fn sat_c10d_string_free(s: *mut c_char);
    fn sat_c10d_bytes_free(p: *mut u8);
    fn sat_c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        listen_fd: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut RawStore,
    ) -> *mut c_char;
    fn sat_c10d_store_free(s: *mut RawStore);
    fn sat_c10d_store_set(
        s: *mut RawStore,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> *mut c_char;
    fn sat_c10d_store_get(
        s: *mut RawStore,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn sat_c10d_group_new(
        s: *mut RawStore,
        prefix: *const c_char,
        backend: c_int,
        gloo_device: c_int,
        gloo_arg: *const c_char,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut RawGroup,
    ) -> *mut c_char;
    fn sat_c10d_group_free(g: *mut RawGroup);
    fn sat_c10d_all_reduce_sum(g: *mut RawGroup, tensor: *mut c_void) -> *mut c_char;
    fn sat_c10d_broadcast(g: *mut RawGroup, tensor: *mut c_void, root: c_int) -> *mut c_char;
    fn sat_c10d_all_gather(
        g: *mut RawGroup,
        outputs: *const *mut c_void,
        n: usize,
        input: *mut c_void,
    ) -> *mut c_char;
    fn sat_c10d_barrier(g: *mut RawGroup) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn sat_c10d_reducer_new(
        g: *mut RawGroup,
        params: *const *mut c_void,
        n: usize,
        flat: *mut c_void,
        bucket_first: *const usize,
        bucket_count: *const usize,
        n_buckets: usize,
        out: *mut *mut RawReducer,
    ) -> *mut c_char;
    fn sat_c10d_reducer_finalize(
        r: *mut RawReducer,
        flat: *mut c_void,
        launched_by_hooks: *mut usize,
    ) -> *mut c_char;
    fn sat_c10d_reducer_free(r: *mut RawReducer);
}

/// Turns a shim return value into a result, freeing the error string.
fn take_error(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string the shim allocated and
    // handed over; it is read once here and then freed by the shim's own deallocator.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `err` came from the shim and is freed exactly once.
    unsafe { sat_c10d_string_free(err) };
    Err(message)
}

fn c_string(what: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte: {s:?}"))
}

/// The c10d handle of a tch tensor. torch-sys's `libtch/torch_api.h` defines
/// `typedef torch::Tensor *tensor;`, so `as_ptr()` is an `at::Tensor*`; the shim only
/// reads that object (the collectives write into its storage, which `&Tensor` shares).
fn tensor_ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Whether the shim was compiled with the Gloo backend.
pub(crate) fn has_gloo() -> bool {
    // SAFETY: a pure function of the shim without arguments.
    unsafe { sat_c10d_has_gloo() != 0 }
}

/// Whether the shim was compiled with the NCCL backend.
pub(crate) fn has_nccl() -> bool {
    // SAFETY: a pure function of the shim without arguments.
    unsafe { sat_c10d_has_nccl() != 0 }
}

/// An owned `c10d::TCPStore`.
pub(crate) struct Store(NonNull<RawStore>);

// SAFETY: the store is an owned heap object not tied to the creating thread (c10d's
// TCPStore keeps no thread-local state); `Store` is not `Sync`, so it is never used from
// two threads at once.
unsafe impl Send for Store {}

/// This process's part in a TCPStore.
pub(crate) enum StoreRole {
    /// Connects to the server at `host:port`; binds nothing.
    Client,
    /// Serves the store; c10d binds the port on every interface.
    Server,
    /// Serves the store on this socket, already bound to the port and listening; c10d
    /// takes it over (`TCPStoreOptions::masterListenFd`).
    ServerOn(TcpListener),
}

impl Store {
    /// Connects to, or serves, the TCPStore at `host:port` (see [`StoreRole`]).
    pub(crate) fn new(
        host: &str,
        port: u16,
        role: StoreRole,
        world_size: i32,
        timeout_ms: i64,
    ) -> Result<Store, String> {
        let host = c_string("host", host)?;
        let (is_server, listen_fd): (c_int, c_int) = match role {
            StoreRole::Client => (0, -1),
            StoreRole::Server => (1, -1),
            // The descriptor leaves Rust's ownership here: c10d closes it with the store.
            StoreRole::ServerOn(listener) => (1, listener.into_raw_fd()),
        };
        let mut out: *mut RawStore = ptr::null_mut();
        // SAFETY: `host` is a valid C string for the call; `listen_fd` is -1 or an open
        // listening socket that nothing in Rust owns any more (`into_raw_fd`), so c10d
        // may take it over and close it; `out` is a valid slot the shim fills with an
        // owned handle on success and leaves NULL on failure.
        let err = unsafe {
            sat_c10d_store_new(
                host.as_ptr(),
                port,
                is_server,
                listen_fd,
                world_size,
                timeout_ms,
                &mut out,
            )
        };
        take_error(err)?;
        NonNull::new(out)
            .map(Store)
            .ok_or_else(|| "store_new returned no handle".to_owned())
    }

    /// Sets `key` to `value`.
    pub(crate) fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = c_string("store key", key)?;
        // SAFETY: the handle is live (owned by self); key and value are valid for reads
        // of their lengths for the duration of the call, and the shim copies them.
        let err = unsafe {
            sat_c10d_store_set(self.0.as_ptr(), key.as_ptr(), value.as_ptr(), value.len())
        };
        take_error(err)
    }

    /// Gets `key`, waiting for it up to the store's timeout.
    pub(crate) fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let key = c_string("store key", key)?;
        let mut data: *mut u8 = ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: the handle is live; `data`/`len` are valid slots the shim fills with a
        // malloc'd buffer (or NULL when the value is empty) that we then own.
        let err = unsafe { sat_c10d_store_get(self.0.as_ptr(), key.as_ptr(), &mut data, &mut len) };
        take_error(err)?;
        if data.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: on success a non-null `data` points to `len` initialised bytes that the
        // shim allocated for us; they are copied before being freed once.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        // SAFETY: `data` came from the shim's allocator and is freed exactly once.
        unsafe { sat_c10d_bytes_free(data) };
        Ok(value)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and freed exactly once, here.
        unsafe { sat_c10d_store_free(self.0.as_ptr()) }
    }
}

/// How Gloo picks its network device (`ProcessGroupGloo::createDevice*`).
pub(crate) enum DeviceArg<'a> {
    Hostname(&'a str),
    Interface(&'a str),
    Default,
}

/// An owned c10d backend (a process group of one backend).
pub(crate) struct Group(NonNull<RawGroup>);

// SAFETY: c10d backends are owned heap objects whose worker threads are their own; they
// may be driven from any one thread. `Group` is not `Sync`: collectives are never issued
// from two threads at once (c10d requires one order of collectives on every rank).
unsafe impl Send for Group {}

impl Group {
    /// Creates the backend (`0` = Gloo, `1` = NCCL) and rendezvouses through `store`
    /// under the key prefix `prefix`.
    pub(crate) fn new(
        store: &Store,
        prefix: &str,
        backend: i32,
        device: DeviceArg<'_>,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
    ) -> Result<Group, String> {
        let prefix = c_string("key prefix", prefix)?;
        let (kind, arg) = match device {
            DeviceArg::Hostname(h) => (0, Some(c_string("Gloo hostname", h)?)),
            DeviceArg::Interface(i) => (1, Some(c_string("Gloo interface", i)?)),
            DeviceArg::Default => (2, None),
        };
        let arg_ptr = arg.as_ref().map_or(ptr::null(), |a| a.as_ptr());
        let mut out: *mut RawGroup = ptr::null_mut();
        // SAFETY: the store handle is live (the shim keeps its own reference to it); the
        // strings are valid C strings (or NULL where the shim ignores them) for the call;
        // `out` is a valid slot filled with an owned handle on success.
        let err = unsafe {
            sat_c10d_group_new(
                store.0.as_ptr(),
                prefix.as_ptr(),
                backend,
                kind,
                arg_ptr,
                rank,
                world_size,
                timeout_ms,
                &mut out,
            )
        };
        take_error(err)?;
        NonNull::new(out)
            .map(Group)
            .ok_or_else(|| "group_new returned no handle".to_owned())
    }

    /// Sums `tensor` over all ranks in place.
    pub(crate) fn all_reduce_sum(&self, tensor: &Tensor) -> Result<(), String> {
        // SAFETY: the group handle is live; the tensor handle is a valid `at::Tensor*`
        // borrowed for the call (the shim only copies the refcounted handle).
        take_error(unsafe { sat_c10d_all_reduce_sum(self.0.as_ptr(), tensor_ptr(tensor)) })
    }

    /// Overwrites `tensor` with rank `root`'s.
    pub(crate) fn broadcast(&self, tensor: &Tensor, root: i32) -> Result<(), String> {
        // SAFETY: as in `all_reduce_sum`.
        take_error(unsafe { sat_c10d_broadcast(self.0.as_ptr(), tensor_ptr(tensor), root) })
    }

    /// Gathers `input` of every rank into `outputs` (one per rank, allocated by the caller).
    pub(crate) fn all_gather(&self, outputs: &[Tensor], input: &Tensor) -> Result<(), String> {
        let ptrs: Vec<*mut c_void> = outputs.iter().map(tensor_ptr).collect();
        // SAFETY: the group handle is live; `ptrs` holds `ptrs.len()` valid `at::Tensor*`
        // borrowed from `outputs` for the call, and `input` is one too.
        take_error(unsafe {
            sat_c10d_all_gather(
                self.0.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                tensor_ptr(input),
            )
        })
    }

    /// Waits until every rank reaches the barrier.
    pub(crate) fn barrier(&self) -> Result<(), String> {
        // SAFETY: the group handle is live.
        take_error(unsafe { sat_c10d_barrier(self.0.as_ptr()) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and freed exactly once, here.
        unsafe { sat_c10d_group_free(self.0.as_ptr()) }
    }
}

/// An owned gradient reducer (`shim/reducer.cpp`): one post-accumulate-grad hook per
/// parameter launches each bucket's all-reduce once its gradients are accumulated;
/// [`Reducer::finalize`] ends the step. It holds its own reference to the group's backend.
pub(crate) struct Reducer(NonNull<RawReducer>);

impl Reducer {
    /// Registers the hooks on `params` (in flat order; their gradients are views of
    /// `flat`), bucket `k` being parameters `first[k]..first[k] + count[k]`.
    pub(crate) fn new(
        group: &Group,
        params: &[Tensor],
        flat: &Tensor,
        first: &[usize],
        count: &[usize],
    ) -> Result<Reducer, String> {
        if first.len() != count.len() {
            return Err("bucket bounds of unequal lengths".to_owned());
        }
        let ptrs: Vec<*mut c_void> = params.iter().map(tensor_ptr).collect();
        let mut out: *mut RawReducer = ptr::null_mut();
        // SAFETY: the group handle is live; `ptrs` holds `ptrs.len()` valid `at::Tensor*`
        // borrowed from `params` for the call (the shim copies the refcounted handles it
        // keeps); `flat` is one too; `first` and `count` are valid for reads of
        // `first.len()` elements (checked equal above); `out` is a valid slot filled with
        // an owned handle on success.
        let err = unsafe {
            sat_c10d_reducer_new(
                group.0.as_ptr(),
                ptrs.as_ptr(),
                ptrs.len(),
                tensor_ptr(flat),
                first.as_ptr(),
                count.as_ptr(),
                first.len(),
                &mut out,
            )
        };
        take_error(err)?;
        NonNull::new(out)
            .map(Reducer)
            .ok_or_else(|| "reducer_new returned no handle".to_owned())
    }

    /// Launches the buckets the hooks did not, waits for all, divides `flat` by the world
    /// size; returns how many buckets the hooks launched before the last gradient.
    pub(crate) fn finalize(&mut self, flat: &Tensor) -> Result<usize, String> {
        let mut launched = 0usize;
        // SAFETY: the reducer handle is live and used by one thread at a time (`&mut`);
        // `flat` is a valid `at::Tensor*` borrowed for the call; `launched` is a valid slot.
        let err =
            unsafe { sat_c10d_reducer_finalize(self.0.as_ptr(), tensor_ptr(flat), &mut launched) };
        take_error(err)?;
        Ok(launched)
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and freed exactly once, here (the shim
        // removes its hooks from the parameters first).
        unsafe { sat_c10d_reducer_free(self.0.as_ptr()) }
    }
}

// ------------------------------------------------ the differentiable all-reduce
// (shim/autograd_sum.cpp)

/// Opaque `sat_c10d_sum` (a backend reserved for differentiable sums).
#[repr(C)]
struct RawSum {
    _opaque: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

extern "C" {
    fn sat_c10d_sum_new(g: *mut RawGroup, out: *mut *mut RawSum) -> *mut c_char;
    fn sat_c10d_sum_free(s: *mut RawSum);
    fn sat_c10d_sum_apply(s: *mut RawSum, input: *mut c_void, out: *mut *mut c_void)
        -> *mut c_char;
}

/// A backend reserved for differentiable sums: [`Sum::apply`] is an all-reduce (sum)
/// recorded in autograd, whose backward pass all-reduces the incoming gradient.
pub(crate) struct Sum(NonNull<RawSum>);

// SAFETY: the shim's object is an owned heap object not tied to a thread, and every
// collective it issues takes the object's own mutex (c10d backends number collectives
// without one), so it may be used from several threads at once; its backend is used by
// nothing else (`Sum::new` takes the group over).
unsafe impl Send for Sum {}
// SAFETY: as for `Send`: `apply` issues under the shim's mutex; nothing else is shared.
unsafe impl Sync for Sum {}

impl Sum {
    /// Takes `group` over for differentiable sums (its backend then serves nothing else).
    pub(crate) fn new(group: Group) -> Result<Sum, String> {
        let mut out: *mut RawSum = ptr::null_mut();
        // SAFETY: the group handle is live (owned by `group`, freed after the call when
        // `group` drops; the shim keeps its own references to the backend and store);
        // `out` is a valid slot filled with an owned handle on success.
        let err = unsafe { sat_c10d_sum_new(group.0.as_ptr(), &mut out) };
        take_error(err)?;
        NonNull::new(out)
            .map(Sum)
            .ok_or_else(|| "sum_new returned no handle".to_owned())
    }

    /// `input` summed over the ranks: a new tensor with a gradient function.
    pub(crate) fn apply(&self, input: &Tensor) -> Result<Tensor, String> {
        let mut out: *mut c_void = ptr::null_mut();
        // SAFETY: the handle is live; `input` is a valid `at::Tensor*` borrowed for the
        // call (the shim only reads it); `out` is a valid slot the shim fills on success.
        take_error(unsafe { sat_c10d_sum_apply(self.0.as_ptr(), tensor_ptr(input), &mut out) })?;
        if out.is_null() {
            return Err("sum_apply returned no tensor".to_owned());
        }
        // SAFETY: on success `out` is a `new at::Tensor` (tch's handle type, torch-sys's
        // `typedef torch::Tensor *tensor`) that nothing else owns; tch frees it with
        // `delete` (torch-sys's `at_free`) when the Tensor drops.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }
}

impl Drop for Sum {
    fn drop(&mut self) {
        // SAFETY: the handle is owned by self and freed exactly once, here.
        unsafe { sat_c10d_sum_free(self.0.as_ptr()) }
    }
}
