// C shim over PyTorch's c10d (TCPStore, ProcessGroupGloo, ProcessGroupNCCL) for the
// Rust crate `sat-distributed`.
//
// Rules kept by every function here:
// - `extern "C"` and `noexcept`: nothing but plain C values cross the boundary.
// - Every body runs inside `guarded(...)` (shim.hpp), which turns any C++ exception into a
//   heap string (`malloc`) returned to Rust; NULL means success. Rust frees it with
//   `sat_c10d_string_free`.
// - Tensors are tch's handles: torch-sys's `libtch/torch_api.h` defines
//   `typedef torch::Tensor *tensor;`, so a `*mut C_tensor` from
//   `tch::Tensor::as_ptr()` is an `at::Tensor*`. The shim only reads through it and
//   copies the `at::Tensor` (a refcounted handle sharing the storage), so the
//   collectives write into the caller's storage; ownership never changes hands.
//
// Backends are compiled in by build.rs: SAT_WITH_GLOO (with USE_C10D_GLOO, needs gloo's
// headers) and SAT_WITH_NCCL (with USE_C10D_NCCL, needs nccl.h and the CUDA headers).
// Layout note for Gloo: gloo itself is linked statically into libtorch_cpu.so; this file
// only sees gloo's *headers* (possibly another snapshot, e.g. Debian's libgloo-dev). It
// uses no gloo type by value and calls no inline gloo code: gloo objects appear only
// behind `std::shared_ptr<gloo::transport::Device>` returned by c10d's out-of-line
// `createDevice*` functions and stored in c10d's own `Options::devices`, and
// `ProcessGroupGloo` holds gloo objects only through smart pointers, so `sizeof` and
// member offsets that this file computes do not depend on gloo's layout.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "shim.hpp"

#ifdef SAT_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef SAT_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

using sat_shim::guarded;
using sat_shim::oom_error;
using sat_shim::tensor_ref;

extern "C" {

// 1 when the Gloo backend is compiled in.
int sat_c10d_has_gloo(void) noexcept {
#ifdef SAT_WITH_GLOO
  return 1;
#else
  return 0;
#endif
}

// 1 when the NCCL backend is compiled in.
int sat_c10d_has_nccl(void) noexcept {
#ifdef SAT_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// Must only be called on strings this shim returned (never on oom_error's static).
void sat_c10d_string_free(char* s) noexcept {
  if (s != nullptr && s != oom_error()) {
    std::free(s);
  }
}

void sat_c10d_bytes_free(uint8_t* p) noexcept {
  std::free(p);
}

// A TCPStore: the server when is_server != 0 (it then waits up to timeout_ms for the
// world_size - 1 clients), a client otherwise (it retries to connect up to timeout_ms).
// A server with listen_fd >= 0 serves on that socket, already bound to `port` (c10d's
// documented `masterListenFd`, Python's `master_listen_fd`), and c10d takes the
// descriptor over (it closes it with the store; a failed start may leave it open, never
// closes it twice); with listen_fd < 0 c10d binds `port` on every interface itself.
// A client never binds.
char* sat_c10d_store_new(
    const char* host,
    uint16_t port,
    int is_server,
    int listen_fd,
    int world_size,
    int64_t timeout_ms,
    sat_c10d_store** out) noexcept {
  return guarded([&] {
    TORCH_CHECK(host != nullptr && out != nullptr, "store_new: null argument");
    TORCH_CHECK(world_size >= 1, "store_new: world size must be >= 1");
    TORCH_CHECK(timeout_ms > 0, "store_new: timeout must be > 0 ms");
    TORCH_CHECK(listen_fd < 0 || is_server != 0, "store_new: a client takes no listening socket");
    *out = nullptr;
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    if (listen_fd >= 0) {
      opts.masterListenFd = listen_fd;
    }
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new sat_c10d_store{std::move(store)};
  });
}

void sat_c10d_store_free(sat_c10d_store* s) noexcept {
  try {
    delete s;
  } catch (...) {
  }
}

char* sat_c10d_store_set(
    sat_c10d_store* s,
    const char* key,
    const uint8_t* data,
    size_t len) noexcept {
  return guarded([&] {
    TORCH_CHECK(s != nullptr && key != nullptr, "store_set: null argument");
    TORCH_CHECK(data != nullptr || len == 0, "store_set: null data");
    std::vector<uint8_t> value(data, data + len);
    s->store->set(std::string(key), value);
  });
}

// Blocks until `key` exists or the store's timeout passes. The value is returned in a
// malloc'd buffer (free with sat_c10d_bytes_free; NULL when empty).
char* sat_c10d_store_get(
    sat_c10d_store* s,
    const char* key,
    uint8_t** data,
    size_t* len) noexcept {
  return guarded([&] {
    TORCH_CHECK(
        s != nullptr && key != nullptr && data != nullptr && len != nullptr,
        "store_get: null argument");
    *data = nullptr;
    *len = 0;
    std::vector<uint8_t> value = s->store->get(std::string(key));
    if (!value.empty()) {
      auto* buf = static_cast<uint8_t*>(std::malloc(value.size()));
      TORCH_CHECK(buf != nullptr, "store_get: out of memory");
      std::memcpy(buf, value.data(), value.size());
      *data = buf;
      *len = value.size();
    }
  });
}

// backend: 0 = Gloo, 1 = NCCL. gloo_device: 0 = createDeviceForHostname(gloo_arg),
// 1 = createDeviceForInterface(gloo_arg), 2 = createDefaultDevice(). The process group
// rendezvouses under the key prefix `prefix` of the store.
char* sat_c10d_group_new(
    sat_c10d_store* s,
    const char* prefix,
    int backend,
    int gloo_device,
    const char* gloo_arg,
    int rank,
    int world_size,
    int64_t timeout_ms,
    sat_c10d_group** out) noexcept {
  return guarded([&] {
    TORCH_CHECK(s != nullptr && prefix != nullptr && out != nullptr, "group_new: null argument");
    TORCH_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "group_new: bad rank/world size");
    TORCH_CHECK(timeout_ms > 0, "group_new: timeout must be > 0 ms");
    *out = nullptr;
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
#ifdef SAT_WITH_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      if (gloo_device == 0) {
        TORCH_CHECK(gloo_arg != nullptr, "group_new: null Gloo hostname");
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(std::string(gloo_arg)));
      } else if (gloo_device == 1) {
        TORCH_CHECK(gloo_arg != nullptr, "group_new: null Gloo interface");
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(std::string(gloo_arg)));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, rank, world_size, opts);
#else
      TORCH_CHECK(false, "built without Gloo: install libgloo-dev and rebuild");
#endif
    } else if (backend == 1) {
#ifdef SAT_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, rank, world_size, opts);
#else
      TORCH_CHECK(false, "built without NCCL");
#endif
    } else {
      TORCH_CHECK(false, "group_new: unknown backend ", backend);
    }
    *out = new sat_c10d_group{s->store, std::move(pg)};
  });
}

void sat_c10d_group_free(sat_c10d_group* g) noexcept {
  try {
    delete g;
  } catch (...) {
  }
}

// Sums `tensor` over all ranks, in place.
char* sat_c10d_all_reduce_sum(sat_c10d_group* g, void* tensor) noexcept {
  return guarded([&] {
    TORCH_CHECK(g != nullptr, "all_reduce: null group");
    std::vector<at::Tensor> tensors{tensor_ref(tensor, "all_reduce")};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    g->backend->allreduce(tensors, opts)->wait();
  });
}

// Overwrites `tensor` on every rank with root's values.
char* sat_c10d_broadcast(sat_c10d_group* g, void* tensor, int root) noexcept {
  return guarded([&] {
    TORCH_CHECK(g != nullptr, "broadcast: null group");
    std::vector<at::Tensor> tensors{tensor_ref(tensor, "broadcast")};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    g->backend->broadcast(tensors, opts)->wait();
  });
}

// Gathers `input` from every rank into `outputs[0..n]` (n = world size, each output
// allocated by the caller with input's shape and dtype).
char* sat_c10d_all_gather(
    sat_c10d_group* g,
    void* const* outputs,
    size_t n,
    void* input) noexcept {
  return guarded([&] {
    TORCH_CHECK(g != nullptr && outputs != nullptr, "all_gather: null argument");
    std::vector<at::Tensor> inputs{tensor_ref(input, "all_gather input")};
    std::vector<std::vector<at::Tensor>> outs(1);
    outs[0].reserve(n);
    for (size_t i = 0; i < n; ++i) {
      outs[0].push_back(tensor_ref(outputs[i], "all_gather output"));
    }
    g->backend->allgather(outs, inputs)->wait();
  });
}

char* sat_c10d_barrier(sat_c10d_group* g) noexcept {
  return guarded([&] {
    TORCH_CHECK(g != nullptr, "barrier: null group");
    g->backend->barrier()->wait();
  });
}

}  // extern "C"
