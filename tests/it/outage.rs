//! MongoDB down: every route answers 503 with Retry-After at once, readiness
//! turns false, and both recover without restarting the function; a function
//! started while the database is down starts, not ready.

use std::time::{Duration, Instant};

use finapp_tests::{
    FunctionProcess, PrivateFerret, TestApp, TestEnv, all_functions, send, wait_for,
};
use reqwest::Method;
use serde_json::{Value, json};

const OPTION_ID: &str = "65f0c0ffee0000000000beef";

/// Every route that reads or writes the database, with a body where it takes one.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let application = json!({"loan_types": ["personal"], "amount": 100, "purpose": "Car"});
    let credentials = json!({"username": "outage_user", "password": "secure_password"});
    vec![
        (Method::POST, "/signup", Some(credentials.clone())),
        (Method::POST, "/login", Some(credentials)),
        (Method::POST, "/apply", Some(application.clone())),
        (Method::POST, "/apply-finance", Some(application)),
        (Method::GET, "/status", None),
        (Method::GET, "/dashboard-info", None),
        (Method::GET, "/financing-options", None),
        (
            Method::POST,
            "/select-financing-option",
            Some(json!({"option_id": OPTION_ID})),
        ),
        (Method::PUT, "/update_status/someone/approved", None),
        (Method::GET, "/admin/applications", None),
        (
            Method::PUT,
            "/admin/update_status/65f0c0ffee0000000000cafe/denied",
            None,
        ),
        (Method::GET, "/analytics", None),
    ]
}

async fn ready(function: &FunctionProcess) -> u16 {
    send(reqwest::Client::new().get(format!("{}/readyz", function.base_url)))
        .await
        .0
}

#[tokio::test]
async fn with_mongodb_killed_every_route_is_a_fast_503_and_all_recovers() {
    let mut ferret = PrivateFerret::start().await;
    let env = TestEnv::new().with_mongodb(&ferret.uri);
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("outage_admin").await;
    let function = FunctionProcess::start("status", &env).await;
    assert_eq!(ready(&function).await, 200);

    ferret.kill().await;
    for (method, path, body) in routes() {
        let mut request = app.authed(method.clone(), path, &admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let started = Instant::now();
        let response = request.send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(response.status().as_u16(), 503, "{method} {path}");
        assert!(
            response.headers().contains_key("retry-after"),
            "{method} {path}: no Retry-After"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{method} {path} took {took:?}"
        );
    }
    wait_for(
        "readiness to turn false",
        Duration::from_secs(5),
        || async { (ready(&function).await == 503).then_some(()) },
    )
    .await;

    ferret.resume().await;
    wait_for("readiness to return", Duration::from_secs(15), || async {
        (ready(&function).await == 200).then_some(())
    })
    .await;
    let (status, _) = send(app.authed(Method::GET, "/status", &admin)).await;
    assert_eq!(status, 200, "the in-process functions did not recover");
}

#[tokio::test]
async fn a_function_started_while_mongodb_is_down_starts_not_ready_and_becomes_ready() {
    let mut ferret = PrivateFerret::start().await;
    let env = TestEnv::new().with_mongodb(&ferret.uri);
    ferret.kill().await;

    let function = FunctionProcess::start("status", &env).await;
    assert_eq!(ready(&function).await, 503);
    ferret.resume().await;
    wait_for(
        "readiness once MongoDB is back",
        Duration::from_secs(15),
        || async { (ready(&function).await == 200).then_some(()) },
    )
    .await;
    function
        .process
        .wait_for_line("indexes ensured", Duration::from_secs(15))
        .await;
}
