//! The account is the authority, and no account can grow a response: a
//! deleted user's token stops working, `/status` is bounded under a memory
//! limit, pending applications are capped.

use std::time::Duration;

use finapp_tests::{
    FunctionProcess, MemoryCgroup, TestApp, TestEnv, all_functions, function_binary, routes::Table,
    send, wait_for,
};
use mongodb::bson::{DateTime, Document, doc};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

/// Every route that takes a plain user's token, with a body where it takes one.
fn user_routes() -> Vec<(Method, String, Option<Value>)> {
    let table = Table::load();
    table
        .routes
        .iter()
        .filter(|route| {
            table
                .functions
                .iter()
                .any(|function| function.name == route.function && function.who == "user")
        })
        .map(|route| {
            let method = Method::from_bytes(route.method.as_bytes()).unwrap();
            let body = (method == Method::POST).then(|| json!({}));
            (method, route.sample.clone(), body)
        })
        .collect()
}

async fn statuses(app: &TestApp, token: &str) -> Vec<(String, u16)> {
    let mut statuses = Vec::new();
    for (method, path, body) in user_routes() {
        let mut request = app.authed(method.clone(), &path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        statuses.push((format!("{method} {path}"), send(request).await.0));
    }
    statuses
}

#[tokio::test]
async fn a_deleted_users_token_gets_401_on_every_user_route_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    assert!(user_routes().len() >= 6, "{:?}", user_routes());

    // A well-signed token for a name that never existed: refused at once.
    let ghost = finapp_tests::expose(
        &app.deps
            .tokens
            .issue("never_signed_up", finapp_shared::auth::Role::User),
    )
    .to_owned();
    for (route, status) in statuses(&app, &ghost).await {
        assert_eq!(
            status, 401,
            "{route} with a token of a user that never existed"
        );
    }

    // A real user, used, then deleted: refused within the documented cache time.
    let token = app.token_for("short_lived").await;
    let (status, _) = send(app.authed(Method::GET, "/status", &token)).await;
    assert_eq!(status, 200);
    env.db()
        .await
        .collection::<Document>("users")
        .delete_one(doc! { "username": "short_lived" })
        .await
        .unwrap();
    wait_for(
        "the deleted user's token to be refused",
        app.deps.config.accounts.user_check_cache + Duration::from_secs(3),
        || async {
            let (status, _) = send(app.authed(Method::GET, "/status", &token)).await;
            (status == 401).then_some(())
        },
    )
    .await;
    for (route, status) in statuses(&app, &token).await {
        assert_eq!(status, 401, "{route} with a deleted user's token");
    }
    let body = json!({"loan_types": ["personal"], "amount": 100.0, "purpose": "Car"});
    let (status, reply) = send(app.authed(Method::POST, "/apply", &token).json(&body)).await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["detail"], "token's user no longer exists");
    assert_eq!(env.count("applications").await, 0, "a refused token wrote");
}

/// `count` decided (approved or denied) applications of `user`, inserted at once.
async fn seed_applications(env: &TestEnv, user: &str, count: usize) {
    let base = DateTime::now().timestamp_millis();
    let documents: Vec<Document> = (0..count)
        .map(|i| {
            let at = DateTime::from_millis(base - i as i64 * 1000);
            let status = ["approved", "denied"][i % 2];
            doc! {
                "loan_types": ["personal"], "amount": 1000.0 + i as f64,
                "purpose": "x".repeat(200), "status": status,
                "submitted_by": user, "submitted_at": at,
                "status_history": [{ "status": "pending", "by": user, "at": at }],
            }
        })
        .collect();
    let applications = env.db().await.collection::<Document>("applications");
    for chunk in documents.chunks(1000) {
        applications.insert_many(chunk).await.unwrap();
    }
}

/// The `Link` header's next page, if any.
fn next_page(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().ok()?;
    let (target, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    Some(target.trim().trim_matches(['<', '>']).to_owned())
}

#[tokio::test]
async fn status_pages_through_1000_applications_newest_first_and_never_more_than_a_page() {
    // FerretDB 1.x sorts in memory, so every page reads all of the user's
    // applications there; the default 5 s can pass on a loaded machine.
    let env = TestEnv::new().with_var("HTTP_REQUEST_TIMEOUT_MS", 60_000);
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("hoarder").await;
    seed_applications(&env, "hoarder", 1000).await;

    let mut seen = std::collections::HashSet::new();
    let mut previous_amount = 0.0;
    let mut next = Some("/status".to_owned());
    let mut pages = 0;
    while let Some(path) = next {
        let response = app.authed(Method::GET, &path, &token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        next = next_page(&response);
        let page: Vec<Value> = response.json().await.unwrap();
        assert_eq!(page.len(), 100, "{path}");
        for application in &page {
            // Newest first: the seeded amounts grow with age.
            let amount = application["amount"].as_f64().unwrap();
            assert!(amount > previous_amount, "out of order at {amount}");
            previous_amount = amount;
            assert!(seen.insert(application["_id"].as_str().unwrap().to_owned()));
        }
        pages += 1;
        assert!(pages <= 10, "more pages than applications allow");
    }
    assert_eq!((pages, seen.len()), (10, 1000));

    let (status, page) = send(app.authed(Method::GET, "/status?per_page=7&page=3", &token)).await;
    assert_eq!(status, 200);
    assert_eq!(page.as_array().unwrap().len(), 7);
    for bad in ["per_page=0", "per_page=101", "page=0", "page=x"] {
        let (status, reply) =
            send(app.authed(Method::GET, &format!("/status?{bad}"), &token)).await;
        assert_eq!(status, 422, "{bad}: {reply}");
    }
}

/// The most memory the function may use: the k8s limit and the Lambda MemorySize.
const MEMORY_LIMIT: u64 = 128 * 1024 * 1024;

/// A process's peak resident memory, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn twenty_parallel_status_calls_of_a_user_with_5000_applications_stay_under_128_mib() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = finapp_tests::user_token(&deps, "heavy").await;
    seed_applications(&env, "heavy", 5000).await;
    // In a memory cgroup limited as the pod and the Lambda are, when this
    // machine lets the test make one; the peak is checked either way.
    let cgroup = MemoryCgroup::create(MEMORY_LIMIT);
    let mut command = match &cgroup {
        Some(cgroup) => cgroup.command(&function_binary("status")),
        None => {
            eprintln!("no memory cgroup can be created here: checking the peak RSS only");
            Command::new(function_binary("status"))
        }
    };
    command
        .env_clear()
        .env("PORT", "0")
        // FerretDB 1.x sorts in memory (it pushes no sort down), so each
        // call reads all 5,000 documents there; on two loaded cores twenty of
        // them take longer than the default 5 s. The function's memory is
        // what this test is about.
        .env("HTTP_REQUEST_TIMEOUT_MS", "60000")
        .envs(env.vars());
    let function = FunctionProcess::spawn(command).await;
    let pid = function.process.id().unwrap();
    let client = reqwest::Client::new();

    for round in 0..1 {
        let calls = (0..20).map(|i| {
            let request = client
                .get(format!(
                    "{}/status?page={}",
                    function.base_url,
                    1 + (i * 7 + round) % 50
                ))
                .bearer_auth(&token);
            async move {
                let Ok(response) = request.send().await else {
                    return (0, 0);
                };
                let status = response.status().as_u16();
                let page: Vec<Value> = response.json().await.unwrap_or_default();
                (status, page.len())
            }
        });
        for (status, len) in futures_util::future::join_all(calls).await {
            assert_eq!(
                (status, len),
                (200, 100),
                "function output: {:?}",
                function.process.output()
            );
        }
    }
    let rss = peak_rss(pid);
    assert!(rss < MEMORY_LIMIT, "peak RSS {} MiB", rss / 1024 / 1024);
    if let Some(cgroup) = &cgroup {
        assert_eq!(cgroup.oom_kills(), 0, "the function was OOM-killed");
        assert!(
            cgroup.peak() < MEMORY_LIMIT,
            "cgroup peak {} bytes",
            cgroup.peak()
        );
        eprintln!("cgroup peak {} KiB", cgroup.peak() / 1024);
    }
    eprintln!(
        "status with 5,000 applications: peak RSS {} KiB",
        rss / 1024
    );
}

#[tokio::test]
async fn applications_past_the_pending_cap_are_refused_until_one_is_decided() {
    let env = TestEnv::new().with_var("MAX_PENDING_APPLICATIONS", 3);
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("eager").await;
    let admin = app.admin_token("capper").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.apply(&token, f64::from(100 + i)).await);
    }
    let body = json!({"loan_types": ["personal"], "amount": 5.0, "purpose": "More"});
    for path in ["/apply", "/apply-finance"] {
        let (status, reply) = send(app.authed(Method::POST, path, &token).json(&body)).await;
        assert_eq!(status, 409, "{path}: {reply}");
        assert_eq!(reply["error"], "conflict");
        assert!(
            reply["detail"]
                .as_str()
                .unwrap()
                .contains("3 pending applications"),
            "{reply}"
        );
    }
    assert_eq!(
        env.count("applications").await,
        3,
        "a refused application was stored"
    );

    // Another user is not affected, and a decision makes room.
    app.apply(&app.token_for("patient_one").await, 1.0).await;
    let (status, _) = send(app.authed(
        Method::PUT,
        &format!("/admin/update_status/{}/approved", ids[0]),
        &admin,
    ))
    .await;
    assert_eq!(status, 200);
    app.apply(&token, 6.0).await;
}
