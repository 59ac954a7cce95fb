// A differentiable all-reduce (sum) for the Rust crate `sat-distributed`: what
// synchronised BatchNorm needs, since tch has no custom autograd functions.
//
// y = sum over the ranks of x_r, so dL/dx_r = sum over the ranks of dL/dy_r: the backward
// pass is the same all-reduce of the incoming gradient, done here by applying the same
// function to it (so a double backward, `create_graph`, is differentiable too).
//
// The sums run on a backend reserved for them (`sat_c10d_sum` takes over a process group
// of its own, made by Rust), never on the trainer's: its collectives are then matched
// only with each other, whatever the trainer does with its own group. Rust may call it
// from any thread, and the autograd engine calls its backward on a device thread for
// CUDA; c10d backends number collectives without a lock (`ProcessGroupGloo::nextTag`),
// so every issue takes `issue`. Ranks must still make the same sums in the same order.
//
// The boundary rules of c10d_shim.cpp hold: `extern "C"`, `noexcept`, every body in
// `guarded`. The result tensor is handed to Rust as a `new at::Tensor` (tch's handle
// type), which tch frees with `delete` (torch-sys's `at_free`).

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include "shim.hpp"

namespace {

// The reserved backend, shared by the Rust handle and every autograd node that sums
// through it (a graph may outlive the handle).
struct SumGroup : torch::CustomClassHolder {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // Gloo reduces host memory: a CUDA tensor goes through a host copy.
  bool host_staging = false;
  std::mutex issue;
};

// `x` summed over the ranks, in a new contiguous tensor on x's device.
at::Tensor sum_over_ranks(SumGroup& g, const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "differentiable all_reduce: undefined tensor");
  auto where = (g.host_staging && !x.is_cpu()) ? at::Device(at::kCPU) : x.device();
  at::Tensor buffer = x.detach().to(
      where, x.scalar_type(), /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  std::vector<at::Tensor> tensors{buffer};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  c10::intrusive_ptr<c10d::Work> work;
  {
    std::lock_guard<std::mutex> lock(g.issue);
    work = g.backend->allreduce(tensors, opts);
  }
  work->wait();
  return buffer.device() == x.device() ? buffer : buffer.to(x.device());
}

struct DifferentiableSum : torch::autograd::Function<DifferentiableSum> {
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const at::Tensor& x,
      c10::intrusive_ptr<SumGroup> group) {
    at::Tensor out = sum_over_ranks(*group, x);
    ctx->saved_data["group"] = at::IValue::make_capsule(std::move(group));
    return out;
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto group = c10::static_intrusive_pointer_cast<SumGroup>(
        ctx->saved_data["group"].toCapsule());
    // Undefined incoming gradients are materialised as zeros (the default), so every
    // rank takes part in this all-reduce.
    return {DifferentiableSum::apply(grads.at(0), std::move(group)), at::Tensor()};
  }
};

}  // namespace

struct sat_c10d_sum {
  c10::intrusive_ptr<SumGroup> group;
};

extern "C" {

// Takes over the process group `g` (which Rust then frees, its backend living on here)
// for differentiable sums.
char* sat_c10d_sum_new(sat_c10d_group* g, sat_c10d_sum** out) noexcept {
  return sat_shim::guarded([&] {
    TORCH_CHECK(g != nullptr && out != nullptr, "sum_new: null argument");
    *out = nullptr;
    auto group = c10::make_intrusive<SumGroup>();
    group->store = g->store;
    group->backend = g->backend;
    group->host_staging = g->backend->getBackendName() == "gloo";
    *out = new sat_c10d_sum{std::move(group)};
  });
}

void sat_c10d_sum_free(sat_c10d_sum* s) noexcept {
  try {
    delete s;
  } catch (...) {
  }
}

// `*out` = the sum over the ranks of `input`, a new tensor recorded in autograd (its
// gradient is the sum over the ranks of the incoming gradients); `input` is unchanged.
char* sat_c10d_sum_apply(sat_c10d_sum* s, void* input, void** out) noexcept {
  return sat_shim::guarded([&] {
    TORCH_CHECK(s != nullptr && out != nullptr, "sum_apply: null argument");
    *out = nullptr;
    const at::Tensor& x = sat_shim::tensor_ref(input, "differentiable all_reduce");
    at::Tensor y = DifferentiableSum::apply(x, s->group);
    *out = new at::Tensor(std::move(y));
  });
}

}  // extern "C"
