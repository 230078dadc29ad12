//! steward's controllers.
//!
//! [`runtime`] is a small kube-runtime: a list-then-watch [`runtime::watcher`]
//! turned into a stream by one `step` function, a reflector cache, a work
//! queue that deduplicates per key and never runs one key twice at once,
//! bounded concurrency, per-key backoff, periodic resync and a finalizer
//! helper. It reaches objects only through a [`runtime::Source`] — in
//! steward, the HTTP API ([`client`]), exactly as a third-party controller
//! would; never the store.

pub mod actual;
pub mod client;
pub mod container;
pub mod containerd;
pub mod events;
pub mod manager;
pub mod network;
pub mod runtime;
