//! The original web client (github anurag-2911/finapp: `src/api/apiService.js`
//! and the pages that call it), replayed call for call: its methods, paths,
//! headers and body shapes (the apply form's amount as a string included),
//! against the watch router and against plain HTTP mode. Each response must
//! carry the fields the client reads, and one UI walk must give the analytics
//! the original would have shown.

use std::time::Duration;

use finapp_tests::{ConsumerTask, TestApp, TestEnv, Watch, all_functions, send, wait_for};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

/// What axios sends with every request.
const AXIOS_ACCEPT: &str = "application/json, text/plain, */*";

/// The client's view of the backend: one base URL, as its `baseURL`.
struct WebClient {
    base: String,
    http: reqwest::Client,
}

impl WebClient {
    fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// A call as axios makes it: `Accept`, and the bearer token once logged in.
    fn call(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", AXIOS_ACCEPT);
        match token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// A call with a JSON body, which axios declares as `application/json`.
    fn call_json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> RequestBuilder {
        self.call(method, path, token)
            .header("Content-Type", "application/json")
            .body(body.to_string())
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Every page of the client, in the order a user and an admin would meet them.
async fn walk(client: &WebClient, app_deps: &finapp_shared::Deps) {
    let credentials = json!({"username": "ui_user", "password": "secure_password"});

    // Signup.js: success is any 2xx; on failure it shows `data.detail`.
    let (status, _) =
        send(client.call_json(Method::POST, "/signup", None, credentials.clone())).await;
    assert!(is_success(status), "signup -> {status}");
    let (status, taken) =
        send(client.call_json(Method::POST, "/signup", None, credentials.clone())).await;
    assert!((400..500).contains(&status), "taken signup -> {status}");
    assert_eq!(taken["detail"], "User already exists", "{taken}");
    let (status, short) = send(client.call_json(
        Method::POST,
        "/signup",
        None,
        json!({"username": "ui_short", "password": "short"}),
    ))
    .await;
    assert!((400..500).contains(&status), "short password -> {status}");
    assert!(
        short["detail"]
            .as_str()
            .is_some_and(|text| text.contains("password")),
        "{short}"
    );

    // Login.js reads access_token and role.
    let (status, login) = send(client.call_json(Method::POST, "/login", None, credentials)).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["role"], "user");
    let token = login["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let token = Some(token.as_str());

    // Dashboard.js: fetchUserApplications, then fetchFinancingOptions.
    let (status, applications) = send(client.call(Method::GET, "/status", token)).await;
    assert_eq!(
        (status, applications.as_array().map(Vec::len)),
        (200, Some(0))
    );
    let options = financing_options(client, token).await;

    // FinancingOptions.js: the catalogue, then one logged visit (no body).
    financing_options(client, token).await;
    let (status, _) = send(client.call(Method::POST, "/log-financing-options-visit", token)).await;
    assert!(is_success(status), "log visit -> {status}");

    // FinancingApplication.js: the catalogue, then the form, whose amount is the input's text.
    financing_options(client, token).await;
    let chosen: Vec<&str> = options[..2]
        .iter()
        .map(|option| option["_id"].as_str().unwrap())
        .collect();
    let (status, applied) = send(client.call_json(
        Method::POST,
        "/apply-finance",
        token,
        json!({"loan_types": chosen, "amount": "15000", "purpose": "Home renovation"}),
    ))
    .await;
    assert!(is_success(status), "apply-finance -> {status}: {applied}");

    // Back on the dashboard: each card's fields, loan types as option ids.
    let (status, applications) = send(client.call(Method::GET, "/status", token)).await;
    assert_eq!(status, 200);
    let card = &applications[0];
    assert!(card["_id"].is_string(), "{card}");
    assert_eq!(card["purpose"], "Home renovation");
    assert_eq!(card["amount"], 15000.0);
    assert_eq!(card["status"], "pending");
    assert_eq!(card["loan_types"], json!(chosen));
    let submitted = card["submitted_at"].as_str().expect("submitted_at");
    assert!(
        mongodb::bson::DateTime::parse_rfc3339_str(submitted).is_ok(),
        "a date the browser cannot read: {submitted}"
    );
    financing_options(client, token).await;

    // AdminPanel.js: the list without paging parameters, `data` an array;
    // then a decision, which axios.put sends with an empty JSON object.
    let hash = app_deps
        .passwords
        .hash("admin_password".to_string().into())
        .await
        .unwrap();
    app_deps
        .store
        .upsert_admin("ui_admin", &hash)
        .await
        .unwrap();
    let (status, login) = send(client.call_json(
        Method::POST,
        "/login",
        None,
        json!({"username": "ui_admin", "password": "admin_password"}),
    ))
    .await;
    assert_eq!((status, &login["role"]), (200, &json!("admin")), "{login}");
    let admin = login["access_token"].as_str().unwrap().to_owned();
    let admin = Some(admin.as_str());
    let (status, listing) = send(client.call(Method::GET, "/admin/applications", admin)).await;
    assert_eq!(status, 200, "{listing}");
    let row = &listing["data"][0];
    assert_eq!(row["_id"], card["_id"]);
    assert_eq!(row["submitted_by"], "ui_user");
    assert_eq!(row["amount"], 15000.0);
    assert_eq!(row["status"], "pending");
    let path = format!(
        "/admin/update_status/{}/approved",
        row["_id"].as_str().unwrap()
    );
    let (status, decided) = send(client.call_json(Method::PUT, &path, admin, json!({}))).await;
    assert!(is_success(status), "decision -> {status}: {decided}");

    // Analytics.js: three totals and two per-user tables. The walk loaded the
    // catalogue four times and logged one visit: one check, as the original
    // counted. Events: sign-up, two logins, the visit, the application.
    let summary = wait_for(
        "the walk's 5 events in /analytics",
        Duration::from_secs(30),
        || async {
            let (status, summary) = send(client.call(Method::GET, "/analytics", admin)).await;
            (status == 200 && summary["total_events"] == 5).then_some(summary)
        },
    )
    .await;
    assert_eq!(summary["total_logins"], 2);
    assert_eq!(summary["total_financing_option_checks"], 1);
    assert_eq!(
        summary["logins_per_user"],
        json!({"ui_user": 1, "ui_admin": 1})
    );
    assert_eq!(summary["financing_checks_per_user"], json!({"ui_user": 1}));
}

/// GET /financing-options, with every field the option cards read.
async fn financing_options(client: &WebClient, token: Option<&str>) -> Vec<Value> {
    let (status, options) = send(client.call(Method::GET, "/financing-options", token)).await;
    assert_eq!(status, 200, "{options}");
    let options = options.as_array().cloned().unwrap_or_default();
    assert_eq!(options.len(), 5, "the seeded catalogue");
    for option in &options {
        for field in ["_id", "option_name", "description"] {
            assert!(option[field].is_string(), "{field}: {option}");
        }
        for field in ["interest_rate", "duration_months", "max_amount"] {
            assert!(option[field].is_number(), "{field}: {option}");
        }
        let criteria = &option["eligibility_criteria"];
        assert!(criteria["min_income"].is_number() && criteria["credit_score"].is_number());
    }
    options
}

#[tokio::test]
async fn the_original_web_client_works_against_plain_http_mode() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    let consumer = ConsumerTask::spawn(env.deps().await);
    walk(&WebClient::new(app.url("")), &app.deps).await;
    consumer.stop().await;
}

#[tokio::test]
async fn the_original_web_client_works_against_the_watch_router() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    finapp_admin::seed_financing_options(&deps.store)
        .await
        .unwrap();
    let watch = Watch::start(&env).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    walk(&WebClient::new(watch.base_url.clone()), &deps).await;
    consumer.stop().await;
}
