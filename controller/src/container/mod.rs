//! The Container reconciler: level-triggered. Each pass reads the desired
//! object and the actual containerd state found by labels, plans one step
//! ([`plan`]), writes status when it changed, and takes the step.

pub mod gc;
pub mod plan;
pub mod probes;
pub mod pulls;
pub mod reconciler;
