//! routes.toml is the one route table: the files generated from it are
//! current, regenerating after a change updates every one of them, and what
//! cannot be generated (openapi.json from the handlers' annotations, the
//! handlers' own routers) is checked against it here.

use std::{collections::BTreeSet, path::Path, process::Command, sync::Arc};

use finapp_shared::Deps;
use finapp_tests::{TestApp, TestEnv, openapi, routes::Table, workspace_root};

fn routes_py(root: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("python3")
        .arg(workspace_root().join("scripts/routes.py"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn every_file_generated_from_routes_toml_is_current() {
    let (ok, output) = routes_py(&workspace_root(), &[]);
    assert!(ok, "{output}");
}

#[test]
fn changing_a_path_in_routes_toml_and_regenerating_updates_every_artefact() {
    // Arrange: a copy of routes.toml and of everything generated from it.
    let dir = std::env::temp_dir().join(format!("finapp-routes-{}", uuid::Uuid::new_v4()));
    for file in [
        "routes.toml",
        "Cargo.toml",
        "template.yaml",
        "README.md",
        "docs/api.md",
    ] {
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::copy(workspace_root().join(file), dir.join(file)).unwrap();
    }
    let k8s = Command::new("cp")
        .args(["-r"])
        .arg(workspace_root().join("infra"))
        .arg(dir.join("infra"))
        .status()
        .unwrap();
    assert!(k8s.success());
    let table = dir.join("routes.toml");
    let text = std::fs::read_to_string(&table).unwrap();
    assert!(text.contains("routes = [\"POST /login\"]"));
    std::fs::write(
        &table,
        text.replace("routes = [\"POST /login\"]", "routes = [\"POST /sign-in\"]"),
    )
    .unwrap();

    // Act + Assert: stale until regenerated, then current, with the new path everywhere.
    let (ok, output) = routes_py(&dir, &[]);
    assert!(!ok, "a changed routes.toml passed the check: {output}");
    let (ok, output) = routes_py(&dir, &["--write"]);
    assert!(ok, "{output}");
    let (ok, output) = routes_py(&dir, &[]);
    assert!(ok, "{output}");
    for (file, want, gone) in [
        (
            "Cargo.toml",
            "\"/sign-in\" = [{ method = \"POST\", function = \"login\" }]",
            "\"/login\" =",
        ),
        ("template.yaml", "Path: /sign-in\n", "Path: /login\n"),
        (
            "infra/k8s/base/ingress/ingress.yaml",
            "- path: /sign-in\n",
            "- path: /login\n",
        ),
        (
            "infra/k8s/base/gateway/httproutes.yaml",
            "value: /sign-in\n",
            "value: /login\n",
        ),
        (
            "README.md",
            "| login | `POST /sign-in` |",
            "| login | `POST /login` |",
        ),
        (
            "docs/api.md",
            "| login | `POST /sign-in` |",
            "| login | `POST /login` |",
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.contains(want), "{file} lacks {want:?}");
        assert!(!text.contains(gone), "{file} still has {gone:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_openapi_document_has_exactly_the_routes_of_routes_toml() {
    let table = Table::load();
    let document: serde_json::Value = serde_json::from_str(&openapi::document()).unwrap();
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| ["get", "post", "put", "patch", "delete"].contains(&key.as_str()))
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routed: BTreeSet<(String, String)> = table
        .routes
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(documented, routed);
}

/// Builds one function's routes.
type BuildRouter = fn(Arc<Deps>) -> finapp_shared::http::Routes;

/// Each HTTP function's router, by its name in routes.toml.
const ROUTERS: &[(&str, BuildRouter)] = &[
    ("signup", signup::router),
    ("login", login::router),
    ("apply", apply::router),
    ("status", status::router),
    ("dashboard-info", dashboard_info::router),
    ("financing-options", financing_options::router),
    (
        "log-financing-options-visit",
        log_financing_options_visit::router,
    ),
    ("select-financing-option", select_financing_option::router),
    ("update-status", update_status::router),
    ("admin-applications", admin_applications::router),
    ("admin-update-status", admin_update_status::router),
    ("analytics", analytics::router),
];

#[tokio::test]
async fn each_function_serves_exactly_its_own_routes_of_routes_toml() {
    let env = TestEnv::new();
    let table = Table::load();
    let names: BTreeSet<&str> = ROUTERS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, table.http_functions().into_iter().collect());

    for (name, build) in ROUTERS {
        let app = TestApp::spawn(&env, *build).await;
        // The templates the edge names requests by (metrics, traces) are the
        // paths this function serves.
        let templates: BTreeSet<String> = build(app.deps.clone())
            .templates()
            .iter()
            .map(|template| (*template).to_owned())
            .collect();
        let own: BTreeSet<String> = table
            .routes
            .iter()
            .filter(|route| route.function == *name)
            .map(|route| route.path.clone())
            .collect();
        assert_eq!(templates, own, "{name}'s route templates");
        for route in &table.routes {
            let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
            let response = app
                .client
                .request(method, app.url(&route.sample))
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let unrouted = (status == 404 && body["message"] == "no such route") || status == 405;
            if route.function == *name {
                assert!(
                    !unrouted,
                    "{name} does not serve {} {}: {status} {body}",
                    route.method, route.path
                );
            } else {
                assert!(
                    unrouted,
                    "{name} also serves {}'s {} {}: {status} {body}",
                    route.function, route.method, route.path
                );
            }
        }
    }
}
