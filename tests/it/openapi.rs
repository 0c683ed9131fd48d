//! The committed OpenAPI document matches the code.

use finapp_tests::{openapi, routes::Table, workspace_root};

#[test]
fn the_committed_openapi_document_is_current() {
    let path = workspace_root().join("openapi.json");
    let generated = openapi::document();
    if std::env::var_os("FINAPP_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is stale: run `FINAPP_UPDATE_OPENAPI=1 cargo test -p finapp-tests openapi` and commit it"
    );
}

#[test]
fn the_document_is_openapi_3_1_and_every_route_has_a_success_response() {
    // Which routes it holds is checked against routes.toml in routes.rs.
    let document: serde_json::Value = serde_json::from_str(&openapi::document()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    for route in Table::load().routes {
        let operation = &document["paths"][&route.path][route.method.to_lowercase()];
        assert!(
            operation["responses"]["200"].is_object() || operation["responses"]["201"].is_object(),
            "{} {} has no success response",
            route.method,
            route.path
        );
    }
}
