//! The committed JSON Schema must match the types. Regenerate it with
//! `UPDATE_SCHEMA=1 cargo test -p config-schema --test json_schema`.

use std::path::Path;

#[test]
fn committed_schema_is_fresh() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ringmesh.schema.json");
    let generated = config_schema::json_schema();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write schema");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "config-schema/ringmesh.schema.json is stale: run `UPDATE_SCHEMA=1 cargo test -p config-schema --test json_schema`"
    );
}

#[test]
fn schema_rejects_unknown_keys_and_names_every_section() {
    let schema: serde_json::Value =
        serde_json::from_str(&config_schema::json_schema()).expect("schema is JSON");
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    for section in [
        "admin",
        "runtime",
        "identity",
        "telemetry",
        "listeners",
        "virtual_hosts",
        "clusters",
        "authorization_policies",
    ] {
        assert!(
            schema["properties"].get(section).is_some(),
            "schema lacks {section}"
        );
    }
}
