//! Every bootstrap under AWS's own Lambda Runtime Interface Emulator
//! (`aws-lambda-rie`, built by scripts/deploy-tools.sh from the Go module
//! proxy): each HTTP function answers API Gateway HTTP API (payload 2.0) events
//! for each of its routes of routes.toml, and notify-consumer an Amazon MQ for
//! RabbitMQ event. Besides `cargo lambda watch` (lambda_watch.rs), this is the
//! runtime API as AWS implements it.

use std::time::Duration;

use base64::Engine as _;
use finapp_shared::{
    auth::Role,
    events::{Event, EventType},
};
use finapp_tests::{
    FunctionProcess, Process, TestEnv, event_token, expose, free_port, function_binary,
    routes::{Route, Table, deploy_tool},
    send, user_token, wait_for, workspace_root,
};
use futures_util::StreamExt as _;
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicConsumeOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use tokio::process::Command;

/// One function's bootstrap under the emulator, on ports of its own.
struct Rie {
    process: Process,
    url: String,
    /// How long an invocation may take before the test gives up on it.
    patience: Duration,
}

impl Rie {
    async fn start(function: &str, env: &TestEnv) -> Self {
        Self::start_with_timeout(function, env, None).await
    }

    /// With `timeout` as the function's timeout (template.yaml's `Timeout`;
    /// the emulator's default is 300 s), which sets each invocation's deadline.
    async fn start_with_timeout(function: &str, env: &TestEnv, timeout: Option<Duration>) -> Self {
        let (rie_port, api_port) = (free_port(), free_port());
        let mut command = Command::new(deploy_tool("bin/aws-lambda-rie"));
        command
            .arg("--runtime-interface-emulator-address")
            .arg(format!("127.0.0.1:{rie_port}"))
            .arg("--runtime-api-address")
            .arg(format!("127.0.0.1:{api_port}"))
            .arg(function_binary(function))
            .env_clear()
            .envs(env.vars())
            .env("AWS_LAMBDA_FUNCTION_NAME", function);
        if let Some(timeout) = timeout {
            command.env("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout.as_secs().to_string());
        }
        let process = Process::spawn(command);
        wait_for(
            "the emulator to listen",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", rie_port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        Self {
            process,
            url: format!("http://127.0.0.1:{rie_port}/2015-03-31/functions/function/invocations"),
            patience: timeout.map_or(Duration::from_secs(30), |t| t + Duration::from_secs(10)),
        }
    }

    /// Invokes the function with `event` and returns what it answered.
    async fn invoke(&self, event: &Value) -> Value {
        self.invoke_traced(event, None).await
    }

    /// [`Self::invoke`] in the X-Ray trace `xray`, as Lambda passes it on.
    async fn invoke_traced(&self, event: &Value, xray: Option<&str>) -> Value {
        let mut request = reqwest::Client::new().post(&self.url);
        if let Some(xray) = xray {
            request = request.header("X-Amzn-Trace-Id", xray);
        }
        let response = request
            .json(event)
            .timeout(self.patience)
            .send()
            .await
            .expect("the emulator answers");
        let text = response.text().await.unwrap();
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("not JSON: {text}\n{}", self.process.output().join("\n")))
    }
}

/// An API Gateway HTTP API event (payload format 2.0) for `route`.
fn http_event(route: &Route, token: Option<&str>, body: &Value) -> Value {
    let mut headers = json!({"content-type": "application/json"});
    if let Some(token) = token {
        headers["authorization"] = json!(format!("Bearer {token}"));
    }
    let route_key = format!("{} {}", route.method, route.path);
    let names = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
    let values = route.sample.split('/').zip(route.path.split('/'));
    let path_parameters: serde_json::Map<String, Value> = names
        .map(|name| {
            let value = values
                .clone()
                .find(|(_, pattern)| *pattern == format!("{{{name}}}"))
                .map(|(value, _)| value)
                .unwrap_or_default();
            (name.to_owned(), json!(value))
        })
        .collect();
    json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": route.sample,
        "rawQueryString": "",
        "headers": headers,
        "pathParameters": path_parameters,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "finapp",
            "domainName": "finapp.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "finapp",
            "http": {
                "method": route.method,
                "path": route.sample,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "finapp-tests"
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": route_key,
            "stage": "$default",
            "time": "01/Dec/2026:09:00:00 +0000",
            "timeEpoch": 1_796_115_600_000_u64
        },
        "body": body.to_string(),
        "isBase64Encoded": false
    })
}

/// The status and JSON body of an API Gateway response.
fn answer(response: &Value) -> (u64, Value) {
    let status = response["statusCode"]
        .as_u64()
        .unwrap_or_else(|| panic!("no statusCode: {response}"));
    let body = response["body"].as_str().unwrap_or("null");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_http_bootstrap_answers_api_gateway_events_under_the_emulator() {
    let env = TestEnv::new();
    let table = Table::load();
    let deps = env.deps().await;
    let admin_hash = deps
        .passwords
        .hash("admin_password".to_string().into())
        .await
        .unwrap();
    deps.store
        .upsert_admin("rie_admin", &admin_hash)
        .await
        .unwrap();
    let admin = deps.tokens.issue("rie_admin", Role::Admin);
    let credentials = json!({"username": "rie_user", "password": "secure_password"});
    let mut user_token = None;

    for name in table.http_functions() {
        let rie = Rie::start(name, &env).await;
        let who = &table.functions.iter().find(|f| f.name == name).unwrap().who;
        for route in table.routes_of(name) {
            let what = format!("{name}: {} {}", route.method, route.path);
            if who == "anyone" {
                // signup comes first in routes.toml, then login.
                let (status, body) =
                    answer(&rie.invoke(&http_event(route, None, &credentials)).await);
                assert!(status == 200 || status == 201, "{what}: {status} {body}");
                assert!(body["access_token"].is_string(), "{what}: {body}");
                user_token = body["access_token"].as_str().map(str::to_owned);
            } else {
                // Without a token: the function's own refusal, not a 404 of an unknown route.
                let (status, body) =
                    answer(&rie.invoke(&http_event(route, None, &json!({}))).await);
                assert_eq!(
                    (status, body["error"].as_str()),
                    (401, Some("unauthorized")),
                    "{what}: {body}"
                );
            }
        }
        // A path the function does not serve is its JSON 404.
        let mut unknown = table.routes_of(name).next().unwrap().clone();
        unknown.path = "/no-such-route".into();
        unknown.sample = unknown.path.clone();
        let (status, body) = answer(&rie.invoke(&http_event(&unknown, None, &json!({}))).await);
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{name}: {body}"
        );

        // And one real answer with a token, for a user and for an admin.
        if name == "status" {
            let route = table.routes_of(name).next().unwrap();
            let token = user_token.as_deref().expect("signup ran first");
            let (status, body) = answer(
                &rie.invoke(&http_event(route, Some(token), &json!({})))
                    .await,
            );
            assert_eq!((status, body.is_array()), (200, true), "status: {body}");
        }
        if name == "analytics" {
            let route = table.routes_of(name).next().unwrap();
            let (status, body) = answer(
                &rie.invoke(&http_event(route, Some(expose(&admin)), &json!({})))
                    .await,
            );
            assert_eq!(status, 200, "analytics: {body}");
            assert!(body["total_events"].is_number(), "analytics: {body}");
        }
    }
    assert_eq!(env.count("users").await, 2, "rie_admin and rie_user");
}

#[tokio::test]
async fn notify_consumer_answers_an_amazon_mq_event_under_the_emulator() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = deps.tokens.issue("rie_mq_user", Role::User);
    let login = Event::new(
        EventType::UserActivity,
        "rie_mq_user",
        "User rie_mq_user logged in",
    );

    // The committed fixture, its one message made this test's: its queue, a
    // real event and a token signed with this test's key.
    let fixture = workspace_root().join("functions/notify-consumer/fixtures/rmq-event.json");
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let mut message = event["rmqMessagesByQueue"]["user_activity::/"][0].clone();
    message["data"] = json!(
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&login).unwrap())
    );
    let header = format!("Bearer {}", expose(&token));
    message["basicProperties"]["headers"]["Authorization"] = json!({"bytes": header.as_bytes()});
    event["rmqMessagesByQueue"] =
        json!({ format!("{}::/", env.queue(EventType::UserActivity)): [message] });

    let rie = Rie::start("notify-consumer", &env).await;
    assert_eq!(
        rie.invoke(&event).await,
        json!({"recorded": 1, "duplicates": 0, "dead_lettered": 0})
    );
    // Amazon MQ redelivers a batch it thinks failed; it is counted once.
    assert_eq!(
        rie.invoke(&event).await,
        json!({"recorded": 0, "duplicates": 1, "dead_lettered": 0})
    );
    assert_eq!(env.count("user_analytics").await, 1);
}

#[tokio::test]
async fn notify_consumer_relays_the_outbox_when_the_schedule_invokes_it_under_the_emulator() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let login = Event::new(
        EventType::UserActivity,
        "rie_scheduled",
        "User rie_scheduled logged in",
    );
    deps.store.record_event(&login).await.unwrap();
    // The committed sample of what an EventBridge schedule delivers.
    let fixture = workspace_root().join("functions/notify-consumer/fixtures/schedule-event.json");
    let schedule: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();

    // A timeout just past RELAY_MARGIN: each invocation relays for about a second.
    let rie = Rie::start_with_timeout("notify-consumer", &env, Some(Duration::from_secs(13))).await;
    assert_eq!(rie.invoke(&schedule).await, json!({"published": 1}));
    let message = env.next_message(EventType::UserActivity).await;
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event.id, login.id);
    event_token(&deps, &message, "rie_scheduled");
    assert_eq!(env.count("outbox").await, 0);
    // The next period finds nothing to do.
    assert_eq!(rie.invoke(&schedule).await, json!({"published": 0}));
}

/// The scheduled relay keeps polling through its invocation (template.yaml:
/// its timeout outlasts the schedule's period), so an event a function
/// records reaches its queue in well under the period. Under the emulator,
/// with one scheduled invocation running, 100 events recorded by
/// log-financing-options-visit, one every 100 ms, each reach RabbitMQ within
/// 2 s of being recorded at the 99th percentile.
#[tokio::test]
async fn under_the_emulator_the_scheduled_relay_delivers_99_percent_of_events_within_two_seconds() {
    const EVENTS: usize = 100;
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = user_token(&deps, "rie_latency").await;
    let visits = FunctionProcess::start("log-financing-options-visit", &env).await;
    let client = reqwest::Client::new();
    let visit = || async {
        let (status, body) = send(
            client
                .post(format!("{}/log-financing-options-visit", visits.base_url))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    };

    // Every message of the queue, with the wall-clock time it arrived.
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = env.queue(EventType::UserActivity);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "rie-latency".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let consuming = tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let now = wall_clock_ms();
            let event: Event = serde_json::from_slice(&delivery.data).unwrap();
            if arrived.send((event, now)).is_err() {
                break;
            }
        }
    });

    // One scheduled invocation: 40 s to its deadline, so it relays for 28 s.
    let rie = Rie::start_with_timeout("notify-consumer", &env, Some(Duration::from_secs(40))).await;
    let fixture = workspace_root().join("functions/notify-consumer/fixtures/schedule-event.json");
    let schedule: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let relaying = tokio::spawn(async move { (rie.invoke(&schedule).await, rie) });
    // The relay is running once a first event has come through it.
    visit().await;
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the scheduled relay publishes within 10 s of its start")
        .unwrap();

    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..EVENTS {
        pace.tick().await;
        visit().await;
    }
    let mut latencies_ms = Vec::with_capacity(EVENTS);
    let mut ids = std::collections::HashSet::new();
    while latencies_ms.len() < EVENTS {
        let (event, arrived_ms) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {EVENTS} events arrived", latencies_ms.len()))
            .unwrap();
        assert!(ids.insert(event.id), "event {} arrived twice", event.id);
        latencies_ms.push(arrived_ms - event.timestamp_ms);
    }
    latencies_ms.sort_unstable();
    // The 99th of 100 in order: 99 of them took at most this long.
    let p99 = latencies_ms[EVENTS * 99 / 100 - 1];
    let p50 = latencies_ms[EVENTS / 2 - 1];
    eprintln!(
        "recorded -> queued: p50 {p50} ms, p99 {p99} ms, max {} ms",
        latencies_ms[EVENTS - 1]
    );
    assert!(p99 <= 2000, "p99 {p99} ms: {latencies_ms:?}");

    // The invocation ends by itself at its window's end, having published all.
    let (report, rie) = relaying.await.unwrap();
    assert_eq!(
        report,
        json!({"published": EVENTS + 1}),
        "{}",
        rie.process.output().join("\n")
    );
    assert_eq!(env.count("outbox").await, 0);
    consuming.abort();
    let emf = emf_lines(&rie.process);
    assert_eq!(
        emf.last().unwrap()["finapp_events_relayed_total"],
        json!(EVENTS as f64 + 1.0)
    );
    assert!(emf.last().unwrap()["finapp_outbox_oldest_age_seconds"].is_number());
}

fn wall_clock_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since_epoch.as_millis()).unwrap()
}

/// The EMF lines a process printed, each checked against every rule of the
/// specification ([`finapp_shared::metrics::emf::check`]).
fn emf_lines(process: &Process) -> Vec<Value> {
    process
        .output()
        .iter()
        .filter(|line| line.contains("\"_aws\""))
        .map(|line| {
            let start = line.find('{').unwrap();
            finapp_shared::metrics::emf::check(&line[start..])
                .unwrap_or_else(|err| panic!("not EMF ({err}): {line}"))
        })
        .collect()
}

#[tokio::test]
async fn under_the_emulator_each_request_prints_one_valid_emf_line() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = finapp_tests::user_token(&deps, "rie_emf_user").await;
    let table = Table::load();
    let route = table
        .routes_of("apply")
        .find(|route| route.path == "/apply")
        .unwrap();
    let application = json!({"loan_types": ["personal"], "amount": 700.0, "purpose": "Car"});
    let rie = Rie::start("apply", &env).await;
    const CREATED: usize = 2;
    const REFUSED: usize = 3;
    for _ in 0..CREATED {
        let (status, body) = answer(
            &rie.invoke(&http_event(route, Some(&token), &application))
                .await,
        );
        assert_eq!(status, 201, "{body}");
    }
    for _ in 0..REFUSED {
        let (status, _) = answer(&rie.invoke(&http_event(route, None, &application)).await);
        assert_eq!(status, 401);
    }
    let lines = wait_for("an EMF line per request", Duration::from_secs(10), || {
        let lines = emf_lines(&rie.process);
        std::future::ready((lines.len() >= CREATED + REFUSED).then_some(lines))
    })
    .await;
    assert_eq!(lines.len(), CREATED + REFUSED, "one line per request");
    let count = |class: &str| {
        lines
            .iter()
            .filter(|line| line["status_class"] == class)
            .map(|line| line["finapp_http_requests_total"].as_f64().unwrap())
            .sum::<f64>()
    };
    assert_eq!(count("2xx"), CREATED as f64);
    assert_eq!(count("4xx"), REFUSED as f64);
    for line in &lines {
        assert_eq!(line["function"], "apply");
        assert_eq!(line["route"], "/apply");
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "FinApp");
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["function", "route", "status_class"]])
        );
        assert!(
            line["finapp_http_request_duration_seconds"]
                .as_f64()
                .unwrap()
                >= 0.0
        );
    }
}

#[tokio::test]
async fn under_the_emulator_a_request_joins_its_xray_trace_and_is_exported_before_the_invocation_ends()
 {
    let collector = crate::traces::Collector::start().await;
    // Batches every ten minutes: only the flush at the end of the invocation
    // can deliver the span within the test's deadline.
    let env = TestEnv::new()
        .with_var("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .with_var("OTEL_BSP_SCHEDULE_DELAY", 600_000);
    let deps = env.deps().await;
    let token = finapp_tests::user_token(&deps, "rie_traced").await;
    let table = Table::load();
    let route = table.routes_of("apply").next().unwrap();
    let rie = Rie::start("apply", &env).await;
    let root = uuid::Uuid::new_v4().simple().to_string();
    let xray = format!(
        "Root=1-{}-{};Parent=53995c3f42cd8ad8;Sampled=1",
        &root[..8],
        &root[8..]
    );
    let mut event = http_event(
        route,
        Some(&token),
        &json!({"loan_types": ["personal"], "amount": 700.0, "purpose": "Car"}),
    );
    event["headers"]["x-amzn-trace-id"] = json!(xray);
    let (status, body) = answer(&rie.invoke_traced(&event, Some(&xray)).await);
    assert_eq!(status, 201, "{body}");

    let trace_id = hex_bytes(&root);
    let request = wait_for(
        "apply's request span, flushed by the invocation",
        Duration::from_secs(10),
        || async { collector.find(|r| r.service == "apply" && r.span.name == "POST /apply") },
    )
    .await;
    assert_eq!(
        request.span.trace_id, trace_id,
        "the X-Ray root is the trace id"
    );
    assert_eq!(request.span.parent_span_id, hex_bytes("53995c3f42cd8ad8"));
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect()
}
