// The tensor bridge between Python and Rust (see build.rs): a torch.Tensor's at::Tensor
// (same TensorImpl, same autograd history, no copy) as tch's heap-allocated tensor
// handle, and back. Every function catches C++ exceptions: nothing unwinds into Rust.
#include <torch/csrc/autograd/python_variable.h>

extern "C" {

// 1 if `object` is a torch.Tensor (or a subclass), else 0.
int sat_python_is_tensor(PyObject* object) {
  try {
    return THPVariable_Check(object) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// A new handle (`new at::Tensor`) sharing `object`'s tensor; null on failure.
void* sat_python_unpack(PyObject* object) {
  try {
    return new at::Tensor(THPVariable_Unpack(object));
  } catch (...) {
    return nullptr;
  }
}

// A new reference to a torch.Tensor sharing the tensor behind `handle`; null (with a
// Python error set) on failure.
PyObject* sat_python_wrap(const void* handle) {
  try {
    return THPVariable_Wrap(*static_cast<const at::Tensor*>(handle));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "sat: wrapping a tensor for Python failed");
    return nullptr;
  }
}

}  // extern "C"
