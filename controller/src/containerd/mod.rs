//! The containerd adapter.
pub mod spec;
