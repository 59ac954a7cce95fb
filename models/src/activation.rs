//! The ReLU every model of this crate uses, with an optional recorder: inside
//! [`record`], the forward pass is cut at every ReLU (its output becomes a fresh leaf
//! tensor), so that a saliency method can walk back through the activations with its
//! own rule (guided backprop) or read them (Grad-CAM++). Outside it, this is `x.relu()`.
use std::cell::RefCell;
use tch::Tensor;

/// One ReLU of a recorded forward pass.
pub struct Cut {
    /// Its input (the pre-activation), still attached to the graph before it.
    pub pre: Tensor,
    /// Its output: a leaf that requires grad, from which the rest of the graph starts.
    pub post: Tensor,
}

thread_local! {
    static RECORDER: RefCell<Option<Vec<Cut>>> = const { RefCell::new(None) };
}

/// `max(x, 0)`, recorded as a [`Cut`] inside [`record`].
pub fn relu(x: &Tensor) -> Tensor {
    RECORDER.with(|r| match r.borrow_mut().as_mut() {
        None => x.relu(),
        Some(cuts) => {
            let post = x.relu().detach().set_requires_grad(true);
            cuts.push(Cut {
                pre: x.shallow_clone(),
                post: post.shallow_clone(),
            });
            post
        }
    })
}

/// Runs `forward` with every ReLU cut, returning its result and the cuts in forward
/// order. Not re-entrant: a nested call records into its own list.
pub fn record<T>(forward: impl FnOnce() -> T) -> (T, Vec<Cut>) {
    let outer = RECORDER.with(|r| r.borrow_mut().replace(Vec::new()));
    let result = forward();
    let cuts = RECORDER.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer));
    (result, cuts.unwrap_or_default())
}
