//! Tensors between Python and Rust: a `torch.Tensor` and a `tch::Tensor` are two
//! handles on one libtorch `at::Tensor` (same storage, same autograd history, no copy).
//! This is the package's only module with `unsafe` code.
//!
//! Python's `torch` and this module use the same shared libtorch: `sat/__init__.py`
//! imports `torch` first, and the module links the libtorch of the torch it was built
//! against (torch 2.13.0), whose libraries the dynamic loader shares by soname.
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use std::ffi::c_void;
use tch::Tensor;

extern "C" {
    fn sat_python_is_tensor(object: *mut pyo3::ffi::PyObject) -> i32;
    fn sat_python_unpack(object: *mut pyo3::ffi::PyObject) -> *mut c_void;
    fn sat_python_wrap(handle: *const c_void) -> *mut pyo3::ffi::PyObject;
}

/// The tensor behind a Python `torch.Tensor`, sharing it; `what` names the argument in
/// the error raised for anything else.
pub fn from_python(object: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    // SAFETY: `object` is a live Python object for the duration of the call (the bound
    // reference holds it and we hold the GIL); the check reads its type only.
    let is_tensor = unsafe { sat_python_is_tensor(object.as_ptr()) } == 1;
    if !is_tensor {
        return Err(PyTypeError::new_err(format!(
            "{what}: expected a torch.Tensor, got {}",
            object.get_type().name()?
        )));
    }
    // SAFETY: `object` is a torch.Tensor (checked above) kept alive by the bound
    // reference; the bridge returns a new heap `at::Tensor` sharing its TensorImpl, or
    // null when libtorch threw.
    let handle = unsafe { sat_python_unpack(object.as_ptr()) };
    if handle.is_null() {
        return Err(PyTypeError::new_err(format!(
            "{what}: libtorch could not read the tensor"
        )));
    }
    // SAFETY: `handle` is a fresh `at::Tensor*` made with `new` by the bridge, owned by
    // nobody else: tch's `Tensor` takes it and frees it with `delete` (same runtime).
    Ok(unsafe { Tensor::from_ptr(handle.cast()) })
}

/// A Python `torch.Tensor` sharing `tensor` (with its autograd history).
pub fn to_python(py: Python<'_>, tensor: &Tensor) -> PyResult<PyObject> {
    // SAFETY: `tensor.as_ptr()` is a live `at::Tensor*` for the duration of the call;
    // the bridge copies the handle (a reference-count increment) into a new Python
    // object and returns a new reference, or null with a Python error set.
    let object = unsafe { sat_python_wrap(tensor.as_ptr().cast()) };
    if object.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `object` is a new (owned) reference returned by `THPVariable_Wrap`.
    Ok(unsafe { PyObject::from_owned_ptr(py, object) })
}
