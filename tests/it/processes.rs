//! The function binaries as real processes in plain HTTP mode: start-up checks,
//! logs, and shutdown.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use finapp_broker::Publisher;
use finapp_shared::events::{Event, EventType};
use finapp_tests::{FunctionProcess, Process, Signal, TestEnv, function_binary, leaks, send};
use serde_json::{Value, json};
use tokio::process::Command;

async fn start_without_valid_secret(
    secret: Option<&str>,
) -> (std::process::ExitStatus, Duration, String) {
    let mut command = Command::new(function_binary("signup"));
    command.env_clear().env("PORT", "0");
    if let Some(secret) = secret {
        command.env("JWT_SECRET_KEY", secret);
    }
    let started = Instant::now();
    let mut process = Process::spawn(command);
    let status = process.wait_exit(Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    // Let the reader tasks drain the pipes.
    process
        .wait_for_line("JWT_SECRET_KEY", Duration::from_secs(2))
        .await;
    (status, elapsed, process.output().join("\n"))
}

#[tokio::test]
async fn a_function_without_jwt_secret_key_exits_non_zero_within_a_second_naming_it() {
    let (status, elapsed, output) = start_without_valid_secret(None).await;
    assert!(!status.success());
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(output.contains("JWT_SECRET_KEY"), "{output}");
}

#[tokio::test]
async fn a_function_with_a_short_jwt_secret_key_exits_non_zero_within_a_second_naming_it() {
    let (status, elapsed, output) =
        start_without_valid_secret(Some("only-31-bytes-long-secret-value")).await;
    assert!(!status.success());
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(output.contains("JWT_SECRET_KEY"), "{output}");
}

#[tokio::test]
async fn signup_and_login_work_as_processes_and_no_secret_reaches_the_logs() {
    let env = TestEnv::new();
    let signup = FunctionProcess::start("signup", &env).await;
    // With the access log on, so every request writes a line that could leak.
    let access_log = ("RUST_LOG", "info,access=debug".to_owned());
    let vars = env.vars().into_iter().chain([access_log]);
    let mut login = FunctionProcess::start_with("login", vars).await;
    let client = reqwest::Client::new();
    let password = "Very-Secret-Password-42";

    let (status, registered) = send(
        client
            .post(format!("{}/signup", signup.base_url))
            .json(&json!({"username": "logwatch", "password": password})),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let (status, logged_in) = send(
        client
            .post(format!("{}/login", login.base_url))
            .json(&json!({"username": "logwatch", "password": password})),
    )
    .await;
    assert_eq!(status, 200, "{logged_in}");
    let (status, _) = send(
        client
            .post(format!("{}/login", login.base_url))
            .header(
                "authorization",
                format!("Bearer {}", logged_in["access_token"].as_str().unwrap()),
            )
            .json(&json!({"username": "logwatch", "password": "Wrong-Secret-Password"})),
    )
    .await;
    assert_eq!(status, 401);
    let (status, health) = send(client.get(format!("{}/healthz", login.base_url))).await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    // The access log has a line per request: its method, route, path and status,
    // inside the request span that carries its id.
    let completed = login
        .process
        .wait_for_line("request completed", Duration::from_secs(5))
        .await;
    let line: Value = serde_json::from_str(&completed).expect("a JSON log line");
    assert!(line["method"].is_string(), "{completed}");
    assert!(
        line["route"]
            .as_str()
            .is_some_and(|route| route.starts_with('/')),
        "{completed}"
    );
    assert!(
        line["path"]
            .as_str()
            .is_some_and(|path| path.starts_with('/')),
        "{completed}"
    );
    assert!(line["status"].is_u64(), "{completed}");
    assert!(line["spans"][0]["request_id"].is_string(), "{completed}");

    login.process.signal(Signal::SIGTERM);
    let status = login.process.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "login did not stop cleanly on SIGTERM: {status}"
    );

    let logs = [signup.process.output(), login.process.output()]
        .concat()
        .join("\n");
    let secrets = [
        password,
        "Wrong-Secret-Password",
        env.jwt_secret.as_str(),
        registered["access_token"].as_str().unwrap(),
        logged_in["access_token"].as_str().unwrap(),
        "eyJ", // the start of any JWT
    ];
    assert_eq!(
        leaks(&logs, secrets),
        None,
        "a secret reached the logs:\n{logs}"
    );
    assert!(
        logs.contains("user logged in"),
        "logs were not captured:\n{logs}"
    );
}

#[tokio::test]
async fn the_notify_consumer_process_records_events_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new();
    let mut command = Command::new(function_binary("notify-consumer"));
    command.env_clear().envs(env.vars());
    let mut consumer = Process::spawn(command);
    consumer
        .wait_for_line("\"consuming\"", Duration::from_secs(10))
        .await;
    let signup = FunctionProcess::start("signup", &env).await;

    let (status, _) = send(
        reqwest::Client::new()
            .post(format!("{}/signup", signup.base_url))
            .json(&json!({"username": "consumed", "password": "secure_password"})),
    )
    .await;
    assert_eq!(status, 201);
    finapp_tests::wait_for("the sign-up recorded", Duration::from_secs(10), || async {
        (env.count("user_analytics").await == 1).then_some(())
    })
    .await;

    consumer.signal(Signal::SIGTERM);
    let status = consumer.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "{status}: {}",
        consumer.output().join("\n")
    );
    assert!(consumer.logged("consumer stopped"));
}

/// notify-consumer as a process of this test's environment.
fn notify_consumer(env: &TestEnv) -> Process {
    let mut command = Command::new(function_binary("notify-consumer"));
    command.env_clear().envs(env.vars());
    Process::spawn(command)
}

/// The `i`th event of the stream: three users, each logging in, checking
/// financing options and applying in turn.
fn stream_event(i: usize) -> Event {
    let user = ["stream_ann", "stream_bob", "stream_cy"][i % 3];
    let message = match (i / 3) % 3 {
        0 => format!("User {user} logged in ({i})"),
        1 => format!("User {user} checked financing options ({i})"),
        _ => format!("User {user} applied ({i})"),
    };
    Event::new(EventType::UserActivity, user, message)
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_and_restarted_records_every_event_exactly_once() {
    const EVENTS: usize = 2_400;
    let env = TestEnv::new();
    let deps = env.deps().await;
    let mut consumer = notify_consumer(&env);
    consumer
        .wait_for_line("\"consuming\"", Duration::from_secs(10))
        .await;

    // As the functions record events: one outbox insert each; the
    // notify-consumer process relays them, and is killed with them in flight.
    let publisher = tokio::spawn({
        let deps = deps.clone();
        async move {
            let mut events = Vec::with_capacity(EVENTS);
            for i in 0..EVENTS {
                let event = stream_event(i);
                deps.store.record_event(&event).await.unwrap();
                events.push(event);
            }
            events
        }
    });

    finapp_tests::wait_for(
        "the consumer to be part-way through the stream",
        Duration::from_secs(60),
        || async { (env.count("user_analytics").await >= 300).then_some(()) },
    )
    .await;
    consumer.signal(Signal::SIGKILL);
    consumer.wait_exit(Duration::from_secs(10)).await;
    let recorded_before_restart = env.count("user_analytics").await;
    assert!(
        recorded_before_restart < EVENTS as u64,
        "the kill came after the whole stream was recorded"
    );

    let mut consumer = notify_consumer(&env);
    consumer
        .wait_for_line("\"consuming\"", Duration::from_secs(10))
        .await;
    let events = publisher.await.unwrap();
    let published: HashSet<String> = events.iter().map(|event| event.id.to_string()).collect();
    assert_eq!(published.len(), EVENTS);
    finapp_tests::wait_for(
        "every event recorded after the restart",
        Duration::from_secs(120),
        || async { (env.count("user_analytics").await >= EVENTS as u64).then_some(()) },
    )
    .await;

    // Once the queue is drained nothing more can arrive: the records are then
    // exactly the published events, none missing, none twice.
    let queue = env.queue(EventType::UserActivity);
    finapp_tests::wait_for("the queue drained", Duration::from_secs(30), || async {
        (env.queue_depth(&queue).await == 0).then_some(())
    })
    .await;

    // A batch delivered again (as a relay or a broker redelivery would): the
    // first 500 events, published a second time with their own ids.
    let publisher = Publisher::new(&deps.config);
    for event in &events[..500] {
        let token = deps.tokens.issue_event(&event.username);
        publisher.publish(event, &token).await.unwrap();
    }
    publisher.close().await;
    finapp_tests::wait_for("the copies drained", Duration::from_secs(30), || async {
        (env.queue_depth(&queue).await == 0).then_some(())
    })
    .await;
    // SIGTERM lets in-flight batches finish and be acknowledged first.
    consumer.signal(Signal::SIGTERM);
    consumer.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(env.queue_depth(&queue).await, 0, "copies left unconsumed");

    // The counters /analytics reads equal a count of the stored events, and
    // both equal the stream as published, by the substring rules.
    let mut expected = finapp_shared::store::AnalyticsSummary {
        total_events: EVENTS as u64,
        events_per_type: [("user_activity".to_string(), EVENTS as u64)].into(),
        ..Default::default()
    };
    for event in &events {
        let user = event.username.clone();
        if event.message.contains("logged in") {
            expected.total_logins += 1;
            *expected.logins_per_user.entry(user.clone()).or_default() += 1;
        }
        if event.message.contains("checked financing options") {
            expected.total_financing_option_checks += 1;
            *expected.financing_checks_per_user.entry(user).or_default() += 1;
        }
    }
    let counted = deps.store.analytics_summary().await.unwrap();
    assert_eq!(
        counted, expected,
        "the counters drifted through the kill and the copies"
    );
    assert_eq!(
        deps.store.analytics_summary_from_events().await.unwrap(),
        expected
    );
    let recorded = env.distinct_strings("user_analytics", "event_id").await;
    assert_eq!(env.count("user_analytics").await, EVENTS as u64);
    assert_eq!(recorded.len(), EVENTS, "an event was recorded twice");
    assert_eq!(recorded.into_iter().collect::<HashSet<_>>(), published);
    assert_eq!(env.count("outbox").await, 0, "events left in the outbox");
}

#[tokio::test]
async fn every_response_echoes_its_request_id_and_the_access_line_carries_the_same() {
    let env = TestEnv::new();
    let access_log = ("RUST_LOG", "info,access=debug".to_owned());
    let status =
        FunctionProcess::start_with("status", env.vars().into_iter().chain([access_log])).await;
    let client = reqwest::Client::new();
    let url = format!("{}/status", status.base_url);

    // A caller's id comes back as it was sent, and is the one logged.
    let response = client
        .get(&url)
        .header("x-request-id", "caller-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "caller-7f3a");

    // Without one, each response gets a new id: this process's prefix and a count.
    let mut made = Vec::new();
    for _ in 0..2 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let (prefix, count) = id.split_once('-').expect("prefix-count");
        assert_eq!(prefix.len(), 16, "{id}");
        assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        count.parse::<u64>().expect("a count");
        made.push(id);
    }
    let prefixes = made.iter().map(|id| id.split_once('-').unwrap().0);
    assert_eq!(
        prefixes.collect::<HashSet<_>>().len(),
        1,
        "one process, one prefix: {made:?}"
    );
    assert_ne!(made[0], made[1], "an id was made twice");

    for id in ["caller-7f3a".to_owned()].into_iter().chain(made) {
        let needle = format!("\"request_id\":\"{id}\"");
        let line = status
            .process
            .wait_for_line(&needle, Duration::from_secs(5))
            .await;
        let line: Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(line["spans"][0]["request_id"], id.as_str(), "{line}");
        assert_eq!(line["status"], 401, "{line}");
    }
}
