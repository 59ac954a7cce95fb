//! The owned, ABI-stable tensor handle. This is the only module with `unsafe` code.
//!
//! A `tch::Tensor` is a pointer to a heap-allocated `at::Tensor` (itself a reference-
//! counted handle to storage on the CPU or a CUDA device). Every library in the process
//! links the same shared libtorch (checked at load time), so that pointer means the same
//! thing in the host and in every plugin: [`RTensor`] carries it across without copying
//! any data. Rules:
//! - one owner per handle: the sender passes a shallow clone, the receiver takes it;
//! - the handle frees the `at::Tensor` with the function of the library that made it;
//! - borrowed access ([`TensorRef`]) never frees.
use abi_stable::StableAbi;
use std::{ffi::c_void, fmt, marker::PhantomData, mem::ManuallyDrop, ops::Deref};
use tch::Tensor;

/// An owned libtorch tensor that can cross the plugin boundary.
#[repr(C)]
#[derive(StableAbi)]
pub struct RTensor {
    /// `*mut C_tensor` of tch (an `at::Tensor*`), never null.
    ptr: *mut c_void,
    /// Frees `ptr`; compiled into the library that made the handle.
    drop_fn: extern "C" fn(*mut c_void),
}

// SAFETY: an `at::Tensor` handle may be moved between threads (tch's `Tensor` is `Send`);
// the handle has a single owner, so no aliasing mutable access arises from moving it.
unsafe impl Send for RTensor {}

extern "C" fn free_tensor(ptr: *mut c_void) {
    // SAFETY: `ptr` came from `RTensor::new`, which took it out of a live `Tensor` and
    // forgot that `Tensor`; this is the single place it is freed (the owner's drop).
    drop(unsafe { Tensor::from_ptr(ptr.cast()) });
}

impl RTensor {
    /// Wraps a tensor, taking ownership of it.
    pub fn new(tensor: Tensor) -> Self {
        let mut tensor = ManuallyDrop::new(tensor);
        Self {
            ptr: tensor.as_mut_ptr().cast(),
            drop_fn: free_tensor,
        }
    }

    /// A new handle sharing storage with `tensor` (a shallow clone; no data copied).
    pub fn from_ref(tensor: &Tensor) -> Self {
        Self::new(tensor.shallow_clone())
    }

    /// Takes the tensor out of the handle.
    pub fn into_tensor(self) -> Tensor {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this.ptr` is a live tensor owned by this handle; the handle is not
        // dropped (ManuallyDrop), so ownership passes to the returned `Tensor` alone.
        unsafe { Tensor::from_ptr(this.ptr.cast()) }
    }

    /// Borrows the tensor without taking ownership.
    pub fn view(&self) -> TensorRef<'_> {
        // SAFETY: `self.ptr` is live for as long as `self` is borrowed; the `Tensor` made
        // here is wrapped in `ManuallyDrop`, so it never frees the pointer it shares.
        let tensor = unsafe { Tensor::from_ptr(self.ptr.cast()) };
        TensorRef {
            tensor: ManuallyDrop::new(tensor),
            _owner: PhantomData,
        }
    }

    /// A new handle sharing storage with this one.
    pub fn shallow_clone(&self) -> Self {
        Self::new(self.view().shallow_clone())
    }
}

impl Drop for RTensor {
    fn drop(&mut self) {
        (self.drop_fn)(self.ptr)
    }
}

impl From<Tensor> for RTensor {
    fn from(tensor: Tensor) -> Self {
        Self::new(tensor)
    }
}

impl fmt::Debug for RTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.view();
        write!(
            f,
            "RTensor({:?}, {:?}, {:?})",
            t.size(),
            t.kind(),
            t.device()
        )
    }
}

/// A borrowed view of an [`RTensor`]: dereferences to `tch::Tensor`, never frees it.
pub struct TensorRef<'a> {
    tensor: ManuallyDrop<Tensor>,
    _owner: PhantomData<&'a RTensor>,
}

impl Deref for TensorRef<'_> {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn round_trip_keeps_storage_and_values() {
        let t = Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]);
        let ptr = t.data_ptr();
        let back = RTensor::from_ref(&t).into_tensor();
        assert_eq!(back.data_ptr(), ptr, "no copy across the handle");
        assert_eq!(back.size(), vec![2, 3]);
        assert!(back.equal(&t));
    }

    #[test]
    fn view_does_not_free_and_drop_releases_reference() {
        let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let handle = RTensor::from_ref(&t);
        {
            let v = handle.view();
            assert_eq!(v.size(), vec![4]);
        }
        // Still usable after the view is gone: the view did not free the tensor.
        assert_eq!(handle.view().sum(Kind::Float).double_value(&[]), 4.0);
        let clone = handle.shallow_clone();
        drop(handle);
        assert_eq!(clone.view().sum(Kind::Float).double_value(&[]), 4.0);
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .expect("rss field")
            .parse()
            .expect("number");
        pages * 4096
    }

    #[test]
    fn handles_release_their_tensors() {
        // 500 fresh 4 MiB tensors pass through handles, clones and views; if any path
        // leaked its reference, ~2 GiB would stay resident.
        let before = resident_bytes();
        for _ in 0..500 {
            let h = RTensor::new(Tensor::ones([1 << 20], (Kind::Float, Device::Cpu)));
            let h2 = h.shallow_clone();
            let _ = h.view().sum(Kind::Float);
            drop(h);
            let _ = h2.into_tensor();
        }
        let grown = resident_bytes().saturating_sub(before);
        assert!(grown < 256 << 20, "resident memory grew by {grown} bytes");
    }
}
