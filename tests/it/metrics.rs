//! Metrics as a scraper sees them: real function processes, real services,
//! a known mix of requests, and `GET /metrics` on the metrics port counting
//! exactly that mix (docs/operations.md).

use std::time::Duration;

use finapp_broker::{Outgoing, Publisher};
use finapp_tests::{FunctionProcess, TestEnv, free_port, send, user_token, wait_for};
use lapin::types::{AMQPValue, FieldTable, LongString};

/// A function process with its metrics endpoint on a free port.
struct Scraped {
    function: FunctionProcess,
    metrics_url: String,
}

impl Scraped {
    async fn start(name: &str, env: &TestEnv) -> Self {
        let function = FunctionProcess::start(name, env).await;
        Self::with(function).await
    }

    async fn with(function: FunctionProcess) -> Self {
        let line = function
            .process
            .wait_for_line("\"metrics listening\"", Duration::from_secs(10))
            .await;
        let port = serde_json::from_str::<serde_json::Value>(&line).unwrap()["port"]
            .as_u64()
            .unwrap();
        Self {
            function,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    async fn scrape(&self) -> Samples {
        let response = reqwest::get(&self.metrics_url).await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Samples(response.text().await.unwrap())
    }
}

/// A Prometheus text exposition.
struct Samples(String);

impl Samples {
    /// The value of the one sample of `name` whose labels include `labels`,
    /// `None` if there is none; panics if several match.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self.all(name, labels);
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} is ambiguous:\n{}",
            self.0
        );
        matching.first().copied()
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.all(name, labels).iter().sum()
    }

    fn all(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let present: Vec<(&str, &str)> = label_text
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .filter_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        Some((key, value.trim_matches('"')))
                    })
                    .collect();
                labels
                    .iter()
                    .all(|wanted| present.contains(wanted))
                    .then(|| value.parse().unwrap())
            })
            .collect()
    }

    /// `finapp_http_requests_total` of `function`, `route`, `class`; 0 if never counted.
    fn requests(&self, function: &str, route: &str, class: &str) -> f64 {
        self.get(
            "finapp_http_requests_total",
            &[
                ("function", function),
                ("route", route),
                ("status_class", class),
            ],
        )
        .unwrap_or(0.0)
    }
}

#[tokio::test]
async fn the_metrics_port_counts_exactly_the_requests_made_by_route_and_status_class() {
    let env = TestEnv::new().with_var("METRICS_PORT", "0");
    let deps = env.deps().await;
    let token = user_token(&deps, "metrics_user").await;
    let apply = Scraped::start("apply", &env).await;
    let url = |path: &str| format!("{}{path}", apply.function.base_url);
    let client = reqwest::Client::new();
    let good = serde_json::json!({"loan_types": ["personal"], "amount": 1000.0, "purpose": "Car"});

    const SUCCESSES: usize = 3;
    for _ in 0..SUCCESSES {
        let (status, body) = send(client.post(url("/apply")).bearer_auth(&token).json(&good)).await;
        assert_eq!(status, 201, "{body}");
    }
    // 4xx: two without a token, one with a body that is not an application.
    for _ in 0..2 {
        let (status, _) = send(client.post(url("/apply")).json(&good)).await;
        assert_eq!(status, 401);
    }
    let (status, _) = send(
        client
            .post(url("/apply"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"amount": "lots"})),
    )
    .await;
    assert_eq!(status, 422);
    // The template, not the path: a route never seen has no series at all.
    let (status, _) = send(client.get(url("/no/such/route"))).await;
    assert_eq!(status, 404);
    // The main port does not serve the metrics; that too is an unmatched 404.
    let response = client.get(url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains("finapp_http"));

    // An outage: the same function with a database nobody listens on.
    let down_env = env
        .sharing_with_broker(&env.rabbitmq_uri)
        .with_mongodb(&format!("mongodb://127.0.0.1:{}", free_port()))
        .with_var("MONGODB_TIMEOUT_MS", 300);
    let down = Scraped::start("apply", &down_env).await;
    const OUTAGE: usize = 2;
    for _ in 0..OUTAGE {
        let (status, body) = send(
            client
                .post(format!("{}/apply", down.function.base_url))
                .bearer_auth(&token)
                .json(&good),
        )
        .await;
        assert_eq!(status, 503, "{body}");
    }

    let samples = apply.scrape().await;
    assert_eq!(samples.requests("apply", "/apply", "2xx"), SUCCESSES as f64);
    assert_eq!(samples.requests("apply", "/apply", "4xx"), 3.0);
    assert_eq!(samples.requests("apply", "/apply", "5xx"), 0.0);
    assert_eq!(samples.requests("apply", "unmatched", "4xx"), 2.0);
    assert_eq!(samples.requests("apply", "/apply-finance", "2xx"), 0.0);
    assert_eq!(
        samples.sum("finapp_http_requests_total", &[("route", "/no/such/route")]),
        0.0
    );
    assert_eq!(
        samples.get(
            "finapp_http_request_duration_seconds_count",
            &[("function", "apply"), ("route", "/apply")]
        ),
        Some(6.0)
    );
    assert_eq!(
        samples.get("finapp_http_requests_in_flight", &[("function", "apply")]),
        Some(0.0)
    );
    assert_eq!(
        samples.get("finapp_events_recorded_total", &[("function", "apply")]),
        Some(SUCCESSES as f64)
    );
    assert_eq!(samples.sum("finapp_mongodb_errors_total", &[]), 0.0);

    let outage = down.scrape().await;
    assert_eq!(outage.requests("apply", "/apply", "5xx"), OUTAGE as f64);
    assert_eq!(outage.requests("apply", "/apply", "2xx"), 0.0);
    // Each 503 failed at its first operation, the token's user check.
    assert_eq!(
        outage.sum("finapp_mongodb_errors_total", &[("function", "apply")]),
        OUTAGE as f64,
        "{}",
        outage.0
    );
    assert_eq!(
        outage.get(
            "finapp_mongodb_errors_total",
            &[("function", "apply"), ("operation", "find user")]
        ),
        Some(OUTAGE as f64)
    );
}

#[tokio::test]
async fn login_reports_its_bcrypt_queue_and_an_off_port_serves_nothing() {
    let env = TestEnv::new().with_var("METRICS_PORT", "0");
    let login = Scraped::start("login", &env).await;
    let (status, _) = send(
        reqwest::Client::new()
            .post(format!("{}/login", login.function.base_url))
            .json(&serde_json::json!({"username": "nobody_here", "password": "wrong-password"})),
    )
    .await;
    assert_eq!(status, 401);
    let samples = login.scrape().await;
    assert_eq!(
        samples.get("finapp_bcrypt_queue_depth", &[("function", "login")]),
        Some(0.0),
        "a finished hash leaves the queue"
    );
    assert_eq!(samples.requests("login", "/login", "4xx"), 1.0);

    // METRICS_PORT=off (the tests' default): the process says nothing of a metrics port.
    let quiet = FunctionProcess::start("login", &TestEnv::new()).await;
    let (status, _) = send(reqwest::Client::new().get(format!("{}/healthz", quiet.base_url))).await;
    assert_eq!(status, 200);
    assert!(!quiet.process.logged("metrics listening"));
}

#[tokio::test]
async fn notify_consumer_counts_relayed_consumed_duplicate_and_dead_lettered_events() {
    let env = TestEnv::new().with_var("METRICS_PORT", "0");
    let deps = env.deps().await;
    let token = user_token(&deps, "metrics_events").await;
    let apply = Scraped::start("apply", &env).await;

    let mut command =
        tokio::process::Command::new(finapp_tests::function_binary("notify-consumer"));
    command.env_clear().envs(env.vars());
    let process = finapp_tests::Process::spawn(command);
    process
        .wait_for_line("\"consuming\"", Duration::from_secs(15))
        .await;
    let consumer = Scraped::with(FunctionProcess {
        process,
        base_url: String::new(),
    })
    .await;

    const EVENTS: usize = 3;
    let client = reqwest::Client::new();
    let body = serde_json::json!({"loan_types": ["personal"], "amount": 500.0, "purpose": "Car"});
    for _ in 0..EVENTS {
        let (status, reply) = send(
            client
                .post(format!("{}/apply", apply.function.base_url))
                .bearer_auth(&token)
                .json(&body),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
    }
    let counter = |samples: &Samples, name: &str| {
        samples
            .get(name, &[("function", "notify-consumer")])
            .unwrap_or(0.0)
    };
    wait_for(
        "the events relayed and consumed",
        Duration::from_secs(20),
        || {
            let consumer = &consumer;
            async move {
                let samples = consumer.scrape().await;
                (counter(&samples, "finapp_events_consumed_total") >= EVENTS as f64).then_some(())
            }
        },
    )
    .await;

    // One message published twice (a redelivery), and one with no token.
    let publisher = Publisher::new(&env.config());
    let mut headers = FieldTable::default();
    headers.insert(
        "Authorization".into(),
        AMQPValue::LongString(LongString::from(format!("Bearer {token}"))),
    );
    let message_id = uuid::Uuid::new_v4().to_string();
    for headers in [headers.clone(), headers, FieldTable::default()] {
        publisher
            .publish_raw(Outgoing {
                queue: "user_activity",
                body: b"User metrics_events logged in",
                message_id: &message_id,
                kind: "user_activity",
                headers,
            })
            .await
            .unwrap();
    }
    publisher.close().await;

    let samples = wait_for(
        "the duplicate and the dead letter",
        Duration::from_secs(20),
        || {
            let consumer = &consumer;
            async move {
                let samples = consumer.scrape().await;
                (counter(&samples, "finapp_events_dead_lettered_total") >= 1.0
                    && counter(&samples, "finapp_events_duplicates_total") >= 1.0
                    && counter(&samples, "finapp_events_consumed_total") > EVENTS as f64
                    && samples.get("finapp_outbox_depth", &[("function", "notify-consumer")])
                        == Some(0.0))
                .then_some(samples)
            }
        },
    )
    .await;
    assert_eq!(
        counter(&samples, "finapp_events_relayed_total"),
        EVENTS as f64
    );
    assert_eq!(
        counter(&samples, "finapp_events_consumed_total"),
        EVENTS as f64 + 1.0
    );
    assert_eq!(counter(&samples, "finapp_events_duplicates_total"), 1.0);
    assert_eq!(counter(&samples, "finapp_events_dead_lettered_total"), 1.0);
    assert_eq!(counter(&samples, "finapp_outbox_depth"), 0.0);
    assert_eq!(counter(&samples, "finapp_outbox_oldest_age_seconds"), 0.0);
    assert_eq!(
        apply
            .scrape()
            .await
            .get("finapp_events_recorded_total", &[("function", "apply")]),
        Some(EVENTS as f64)
    );
}

#[tokio::test]
async fn a_route_with_parameters_is_labelled_by_its_template_never_its_path() {
    let env = TestEnv::new().with_var("METRICS_PORT", "0");
    let update = Scraped::start("update-status", &env).await;
    let client = reqwest::Client::new();
    for user in ["alice_metrics", "bob_metrics"] {
        let (status, _) = send(client.put(format!(
            "{}/update_status/{user}/approved",
            update.function.base_url
        )))
        .await;
        assert_eq!(status, 401);
    }
    let samples = update.scrape().await;
    assert_eq!(
        samples.requests("update-status", "/update_status/{user}/{status}", "4xx"),
        2.0,
        "{}",
        samples.0
    );
    assert!(!samples.0.contains("alice_metrics"), "{}", samples.0);
}
