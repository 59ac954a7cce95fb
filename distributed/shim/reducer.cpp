// The gradient reducer of `sat-distributed`: bucketed all-reduces of one flat gradient,
// launched from autograd hooks while the backward pass still runs (what torch DDP's
// `c10d::Reducer` does, reduced to the one layout sat's optimiser has).
//
// The optimiser keeps every parameter's gradient as a view of ONE flat float tensor
// (host/src/train/optimizer.rs). A bucket is therefore a contiguous slice of that tensor
// (a run of parameters in flat order) and is all-reduced in place, without copies.
// Rust plans the buckets (reducer.rs: from the end of the flat order, DDP's
// `compute_bucket_assignment_by_size` with its 1 MiB first bucket) and passes them here.
//
// Following torch/csrc/distributed/c10d/reducer.cpp:
// - one hook per parameter that runs after its gradient was accumulated (DDP adds a
//   post hook to the parameter's `AccumulateGrad` node; this uses the tensor's
//   post-accumulate-grad hook, the same point, what `register_post_accumulate_grad_hook`
//   installs from Python);
// - `mark_variable_ready`: a parameter marked ready twice in one step is an error; a
//   gradient that is not the bucket's view (`!grad.is_alias_of(bucket_view)` there) is
//   copied into the bucket; the bucket's pending count goes down and, at zero,
//   `mark_bucket_ready`;
// - `mark_bucket_ready`: "Buckets are reduced in sequence": a bucket is launched only
//   after those before it in the launch order, so every rank issues the same collectives
//   in the same order whatever order its hooks fire in;
// - `rebuild_buckets` / `sync_bucket_indices`: after the first step the launch order
//   becomes the order the buckets became ready in, rank 0's (`learn_order`);
// - `finalize_backward`: waits for every bucket's work. Unlike DDP (whose unused
//   parameters need `find_unused_parameters`), finalize launches every bucket the hooks
//   did not: a parameter without a gradient this step keeps the zeros the optimiser put
//   in its slice, so every bucket is reduced every step, in order.
// - `~Reducer` removes the hooks it registered.
// The sum is divided by the world size once, after all waits, on the whole flat tensor:
// the same operation as the one-call fallback (`all_reduce_sum` then `div_`), so on two
// ranks (where a sum of two is exact whatever the chunking) both give identical bits.
//
// Threads: hooks run on the autograd engine's thread for the device (the caller's thread
// on the CPU, a device thread for CUDA) while the caller waits in backward; `finalize` runs
// on the caller's thread after backward returned. A mutex guards the state. Hooks never
// throw: an error is kept and returned by the next finalize (after waiting for what was
// launched, so no collective is left behind).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "shim.hpp"

namespace {

struct Bucket {
  // Parameters [first, first + count) in flat order; their elements
  // [offset, offset + length) of the flat gradient.
  size_t first = 0;
  size_t count = 0;
  int64_t offset = 0;
  int64_t length = 0;
  // Parameters not yet ready this step.
  size_t pending = 0;
  c10::intrusive_ptr<c10d::Work> work;
};

struct State {
  std::mutex mutex;
  c10::intrusive_ptr<c10d::Backend> backend;
  int world_size = 1;
  at::Tensor flat;
  std::vector<at::Tensor> params;
  std::vector<int64_t> offsets;  // of each parameter in `flat`
  std::vector<size_t> bucket_of;  // each parameter's bucket
  std::vector<uint8_t> ready;  // each parameter, this step
  std::vector<Bucket> buckets;
  // Launch order: bucket indices. Index order in the first step; from the second on, the
  // order in which the first step's buckets became ready, as rank 0 saw it.
  std::vector<size_t> order;
  std::vector<size_t> completed;  // buckets in the order they became ready, first step
  bool learned = false;
  size_t next_bucket = 0;  // the first position in `order` not launched this step
  size_t pending_params = 0;  // parameters not yet ready this step
  // Buckets launched this step while some parameter was still waiting for its gradient:
  // their all-reduce ran under the rest of the backward pass.
  size_t launched_by_hooks = 0;
  std::string error;  // the first error of this step
};

at::Tensor slice(const State& s, int64_t offset, int64_t length) {
  return s.flat.narrow(0, offset, length);
}

// Launches every bucket from `next_bucket` on whose parameters are all ready (all of
// them when `all`), in order (DDP's mark_bucket_ready). Call with the mutex held.
void launch_ready(State& s, bool all) {
  for (; s.next_bucket < s.buckets.size(); ++s.next_bucket) {
    Bucket& b = s.buckets[s.order[s.next_bucket]];
    if (!all && b.pending != 0) {
      return;
    }
    std::vector<at::Tensor> tensors{slice(s, b.offset, b.length)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    b.work = s.backend->allreduce(tensors, opts);
  }
}

// DDP's mark_variable_ready for parameter `index`. Call with the mutex held.
void mark_ready(State& s, size_t index, const at::Tensor& param) {
  if (s.ready[index] != 0) {
    TORCH_CHECK(
        false,
        "parameter ",
        index,
        " (flat order) got its gradient twice in one step: a second backward pass "
        "through the model before the gradients were reduced (overlap supports one "
        "backward per step; use [distributed] overlap = false)");
  }
  s.ready[index] = 1;
  const at::Tensor& grad = param.grad();
  const int64_t n = s.params[index].numel();
  at::Tensor view = slice(s, s.offsets[index], n);
  if (grad.defined() && grad.data_ptr() != view.data_ptr()) {
    // Autograd replaced the gradient instead of accumulating into the flat view.
    at::NoGradGuard no_grad;
    view.copy_(grad.reshape({-1}));
  }
  --s.pending_params;
  Bucket& b = s.buckets[s.bucket_of[index]];
  if (--b.pending == 0) {
    if (!s.learned) {
      s.completed.push_back(s.bucket_of[index]);
    }
    size_t before = s.next_bucket;
    launch_ready(s, false);
    if (s.pending_params > 0) {
      s.launched_by_hooks += s.next_bucket - before;
    }
  }
}

struct Hook : torch::autograd::PostAccumulateGradHook {
  Hook(std::weak_ptr<State> state, size_t index) : state(std::move(state)), index(index) {}

  void operator()(const torch::autograd::Variable& param) override {
    std::shared_ptr<State> s = state.lock();
    if (!s) {
      return;
    }
    std::lock_guard<std::mutex> lock(s->mutex);
    if (!s->error.empty()) {
      return;
    }
    try {
      mark_ready(*s, index, param);
    } catch (...) {
      s->error = sat_shim::current_message();
    }
  }

  std::weak_ptr<State> state;
  size_t index;
};

bool is_ours(const at::Tensor& param, const State* state) {
  auto& slot = torch::autograd::impl::post_acc_grad_hooks(param);
  auto* hook = dynamic_cast<Hook*>(slot.get());
  return hook != nullptr && hook->state.lock().get() == state;
}

void remove_hooks(State& s) {
  for (const at::Tensor& p : s.params) {
    if (is_ours(p, &s)) {
      torch::autograd::impl::post_acc_grad_hooks(p).reset();
    }
  }
}

// Checks that every parameter's gradient is the view of `flat` at its offset.
void check_views(const State& s) {
  for (size_t i = 0; i < s.params.size(); ++i) {
    const at::Tensor& g = s.params[i].grad();
    TORCH_CHECK(g.defined(), "reducer: parameter ", i, " has no gradient tensor");
    TORCH_CHECK(
        g.data_ptr() == slice(s, s.offsets[i], s.params[i].numel()).data_ptr() &&
            g.is_contiguous(),
        "reducer: parameter ",
        i,
        "'s gradient is not its view of the flat gradient");
  }
}

void reset_step(State& s) {
  std::fill(s.ready.begin(), s.ready.end(), 0);
  for (Bucket& b : s.buckets) {
    b.pending = b.count;
    b.work.reset();
  }
  s.next_bucket = 0;
  s.pending_params = s.params.size();
  s.launched_by_hooks = 0;
  s.error.clear();
  s.completed.clear();
}

// Waits for every launched bucket; the first failure's message, or "".
std::string wait_all(State& s) {
  std::string first;
  for (Bucket& b : s.buckets) {
    if (!b.work) {
      continue;
    }
    try {
      b.work->wait();
    } catch (...) {
      if (first.empty()) {
        first = sat_shim::current_message();
      }
    }
    b.work.reset();
  }
  return first;
}

// After the first step: the launch order becomes the order in which that step's buckets
// became ready (those that never did last, in index order), rank 0's order on every rank
// (one broadcast, at the same point on every rank). sat's flat gradient is in the order of
// the parameters' names, which is not the backward pass's (a ResNet's `stem` sorts after
// its stages, though its gradient comes last); DDP rebuilds its buckets after the first
// iteration for the same reason (`rebuild_buckets`, rank 0's `sync_bucket_indices`).
void learn_order(State& s) {
  const size_t n = s.buckets.size();
  std::vector<int64_t> order;
  std::vector<uint8_t> seen(n, 0);
  for (size_t k : s.completed) {
    if (seen[k] == 0) {
      seen[k] = 1;
      order.push_back(static_cast<int64_t>(k));
    }
  }
  for (size_t k = 0; k < n; ++k) {
    if (seen[k] == 0) {
      order.push_back(static_cast<int64_t>(k));
    }
  }
  at::Tensor t = at::tensor(order, at::kLong).to(s.flat.device());
  std::vector<at::Tensor> tensors{t};
  c10d::BroadcastOptions opts;
  opts.rootRank = 0;
  opts.rootTensor = 0;
  s.backend->broadcast(tensors, opts)->wait();
  at::Tensor agreed = t.cpu();
  const int64_t* v = agreed.data_ptr<int64_t>();
  std::vector<uint8_t> check(n, 0);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(v[i] >= 0 && static_cast<size_t>(v[i]) < n && check[v[i]] == 0,
        "reducer: rank 0's bucket order is not a permutation");
    check[v[i]] = 1;
    s.order[i] = static_cast<size_t>(v[i]);
  }
  s.learned = true;
  s.completed.clear();
}

}  // namespace

struct sat_c10d_reducer {
  std::shared_ptr<State> state;
};

extern "C" {

// A reducer over `params` (n tch tensor handles, in flat order) whose gradients are views
// of `flat` in that order; bucket k holds parameters [bucket_first[k],
// bucket_first[k] + bucket_count[k]), buckets in launch order. Registers one
// post-accumulate-grad hook per parameter (refused when one already has a hook).
char* sat_c10d_reducer_new(
    sat_c10d_group* g,
    void* const* params,
    size_t n,
    void* flat,
    const size_t* bucket_first,
    const size_t* bucket_count,
    size_t n_buckets,
    sat_c10d_reducer** out) noexcept {
  return sat_shim::guarded([&] {
    TORCH_CHECK(g != nullptr && out != nullptr, "reducer_new: null argument");
    TORCH_CHECK(n == 0 || params != nullptr, "reducer_new: null parameters");
    TORCH_CHECK(
        n_buckets == 0 || (bucket_first != nullptr && bucket_count != nullptr),
        "reducer_new: null buckets");
    *out = nullptr;
    auto s = std::make_shared<State>();
    s->backend = g->backend;
    s->world_size = g->backend->getSize();
    s->flat = sat_shim::tensor_ref(flat, "reducer flat gradient");
    TORCH_CHECK(
        s->flat.dim() == 1 && s->flat.is_contiguous() && s->flat.is_floating_point(),
        "reducer: the flat gradient must be a contiguous 1-D floating tensor");
    int64_t offset = 0;
    for (size_t i = 0; i < n; ++i) {
      s->params.push_back(sat_shim::tensor_ref(params[i], "reducer parameter"));
      s->offsets.push_back(offset);
      offset += s->params.back().numel();
    }
    TORCH_CHECK(
        offset == s->flat.numel(),
        "reducer: the parameters have ",
        offset,
        " elements, the flat gradient ",
        s->flat.numel());
    check_views(*s);
    s->bucket_of.assign(n, n_buckets);
    for (size_t k = 0; k < n_buckets; ++k) {
      Bucket b;
      b.first = bucket_first[k];
      b.count = bucket_count[k];
      TORCH_CHECK(b.count > 0 && b.first + b.count <= n, "reducer: bucket ", k, " out of range");
      b.offset = s->offsets[b.first];
      int64_t end = b.first + b.count < n ? s->offsets[b.first + b.count] : offset;
      b.length = end - b.offset;
      for (size_t i = b.first; i < b.first + b.count; ++i) {
        TORCH_CHECK(s->bucket_of[i] == n_buckets, "reducer: parameter ", i, " in two buckets");
        s->bucket_of[i] = k;
      }
      s->buckets.push_back(b);
    }
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(s->bucket_of[i] < n_buckets, "reducer: parameter ", i, " in no bucket");
    }
    s->ready.assign(n, 0);
    for (size_t k = 0; k < n_buckets; ++k) {
      s->order.push_back(k);
    }
    reset_step(*s);
    for (size_t i = 0; i < n; ++i) {
      TORCH_CHECK(
          torch::autograd::impl::post_acc_grad_hooks(s->params[i]) == nullptr,
          "reducer: parameter ",
          i,
          " already has a post-accumulate-grad hook (another reducer?)");
    }
    for (size_t i = 0; i < n; ++i) {
      torch::autograd::impl::set_post_acc_grad_hooks(
          s->params[i], std::make_unique<Hook>(std::weak_ptr<State>(s), i));
    }
    *out = new sat_c10d_reducer{std::move(s)};
  });
}

// Ends a step: launches the buckets the hooks did not (in order), waits for all, divides
// `flat` (the optimiser's flat gradient now) by the world size. When `flat` is not the
// tensor the reducer was made with (the optimiser rebound its gradients), the buckets are
// reduced on `flat` again, from the first. `launched_by_hooks` receives how many buckets
// the hooks launched before the step's last gradient was accumulated (under backward).
char* sat_c10d_reducer_finalize(sat_c10d_reducer* r, void* flat, size_t* launched_by_hooks) noexcept {
  return sat_shim::guarded([&] {
    TORCH_CHECK(r != nullptr && launched_by_hooks != nullptr, "reducer_finalize: null argument");
    State& s = *r->state;
    std::lock_guard<std::mutex> lock(s.mutex);
    *launched_by_hooks = s.launched_by_hooks;
    const at::Tensor& now = sat_shim::tensor_ref(flat, "reducer flat gradient");
    std::string error = s.error;
    if (error.empty() && (now.data_ptr() != s.flat.data_ptr() || now.numel() != s.flat.numel())) {
      error = wait_all(s);
      if (error.empty() && now.numel() != s.flat.numel()) {
        error = "reducer: the flat gradient changed size";
      }
      if (error.empty()) {
        s.flat = now;
        s.next_bucket = 0;
        *launched_by_hooks = 0;
      }
    }
    if (error.empty()) {
      try {
        launch_ready(s, true);
      } catch (...) {
        error = sat_shim::current_message();
      }
    }
    std::string waited = wait_all(s);
    if (error.empty()) {
      error = waited;
    }
    if (error.empty() && !s.learned) {
      try {
        learn_order(s);
      } catch (...) {
        error = sat_shim::current_message();
      }
    }
    reset_step(s);
    TORCH_CHECK(error.empty(), error);
    at::NoGradGuard no_grad;
    s.flat.div_(static_cast<double>(s.world_size));
  });
}

// Removes the hooks this reducer registered and frees it (a launched bucket's work keeps
// what it needs alive by itself).
void sat_c10d_reducer_free(sat_c10d_reducer* r) noexcept {
  if (r == nullptr) {
    return;
  }
  try {
    std::lock_guard<std::mutex> lock(r->state->mutex);
    remove_hooks(*r->state);
  } catch (...) {
  }
  try {
    delete r;
  } catch (...) {
  }
}

}  // extern "C"
