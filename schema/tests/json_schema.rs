//! The checked-in JSON Schema must be what the code generates.
//! Regenerate with `make schema` (sets STEWARD_UPDATE_SCHEMA=1).

use std::path::PathBuf;

#[test]
fn checked_in_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/schema/container.json");
    let generated = serde_json::to_string_pretty(&steward_schema::Container::json_schema()).unwrap() + "\n";
    if std::env::var_os("STEWARD_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale: run `make schema` and commit the result",
        path.display()
    );
}
