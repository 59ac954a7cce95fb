//! Plugins from the host's side: finding and loading libraries ([`registry`]), checked
//! wrappers of their components ([`component`]), the host's answer to their model
//! queries ([`oracle`]), and how a run combines them into the model's inputs
//! ([`pipeline`]).
pub mod component;
pub mod oracle;
pub mod pipeline;
pub mod registry;
pub mod trust;
