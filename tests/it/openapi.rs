//! The committed OpenAPI document matches the code.

use finapp_tests::{openapi, workspace_root};

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
fn the_document_is_openapi_3_1_and_covers_every_http_route() {
    let document: serde_json::Value = serde_json::from_str(&openapi::document()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let routes = [
        ("post", "/signup"),
        ("post", "/login"),
        ("post", "/apply"),
        ("post", "/apply-finance"),
        ("get", "/status"),
        ("get", "/dashboard-info"),
        ("get", "/financing-options"),
        ("post", "/select-financing-option"),
        ("post", "/log-financing-options-visit"),
        ("put", "/update_status/{user}/{status}"),
        ("get", "/admin/applications"),
        ("put", "/admin/update_status/{application_id}/{status}"),
        ("get", "/analytics"),
    ];
    for (method, path) in routes {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is missing");
        assert!(
            operation["responses"]["200"].is_object() || operation["responses"]["201"].is_object()
        );
    }
    assert_eq!(document["paths"].as_object().unwrap().len(), routes.len());
}
