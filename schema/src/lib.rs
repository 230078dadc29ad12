//! steward's object model.
//!
//! Owns the shapes users write and read: [`ObjectMeta`], the [`Container`]
//! kind (spec and status), the Kubernetes-style [`Status`] error body, label
//! and field selectors, validation with field paths, and parsing of
//! multi-document YAML/JSON manifests. It does no I/O: storage belongs to
//! `steward-store`, HTTP to `steward-apiserver`.

pub mod container;
pub mod event;
pub mod manifest;
pub mod meta;
pub mod quantity;
pub mod selector;
pub mod status;
pub mod table;
pub mod validate;

pub use container::*;
pub use event::{Event, EventSource, ObjectReference};
pub use manifest::{parse_manifests, Document, ManifestError};
pub use meta::{ObjectMeta, Time};
pub use selector::{FieldSelector, LabelSelector, SelectorError};
pub use status::{Status, StatusCause, StatusDetails};
pub use validate::{FieldError, FieldErrors};

/// The API group all steward kinds belong to.
pub const GROUP: &str = "steward.dev";
/// The one served version of the group.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "steward.dev/v1alpha1";
