// What the shim's C++ files share: the handle types behind the opaque pointers that
// Rust holds, and the boundary helpers (`guarded`, `tensor_ref`). See c10d_shim.cpp for
// the rules every `extern "C"` function keeps.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

struct sat_c10d_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct sat_c10d_group {
  // Keeps the store alive as long as the backend that rendezvoused through it.
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace sat_shim {

inline char* dup_string(const std::string& s) noexcept {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) {
    return nullptr;
  }
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

// A static string for the rare case where even the error could not be allocated (one
// object in the whole program: an inline function's static).
inline char* oom_error() noexcept {
  static char msg[] = "sat-distributed shim: out of memory while reporting an error";
  return msg;
}

// The message of the exception being handled (call inside a catch block).
inline std::string current_message() noexcept {
  try {
    throw;
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown C++ exception";
  }
}

// Runs `body`; NULL on success, else the exception's message in a malloc'd string
// (freed by `sat_c10d_string_free`).
template <typename F>
char* guarded(F&& body) noexcept {
  std::string message;
  try {
    body();
    return nullptr;
  } catch (...) {
    message = current_message();
  }
  try {
    if (message.empty()) {
      message = "C++ exception without a message";
    }
    char* out = dup_string(message);
    return out != nullptr ? out : oom_error();
  } catch (...) {
    return oom_error();
  }
}

// The `at::Tensor` behind a tch tensor handle (`tch::Tensor::as_ptr()`).
inline at::Tensor& tensor_ref(void* handle, const char* what) {
  TORCH_CHECK(handle != nullptr, what, ": null tensor handle");
  auto* t = static_cast<at::Tensor*>(handle);
  TORCH_CHECK(t->defined(), what, ": undefined tensor");
  return *t;
}

}  // namespace sat_shim
