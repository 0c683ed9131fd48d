//! No single client can exhaust a function: idle connections under a small
//! open-file limit, and a burst far past the in-flight limit.

use std::time::{Duration, Instant};

use finapp_tests::{FunctionProcess, TestEnv, function_binary, send};
use reqwest::Method;
use tokio::{io::AsyncReadExt as _, net::TcpStream, process::Command};

#[tokio::test]
async fn idle_connections_past_the_file_limit_never_keep_a_real_request_out() {
    let env = TestEnv::new();
    // The function under a 1,024 open-file limit, a common container default.
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=1024:1024")
        .arg(function_binary("status"))
        .env_clear()
        .env("PORT", "0")
        .env("HTTP_HEADER_READ_TIMEOUT_MS", "10000")
        .envs(env.vars());
    let function = FunctionProcess::spawn(command).await;
    let address = function.base_url.trim_start_matches("http://").to_owned();

    // 1,100 connections that never send a byte, all open at once: they are
    // all accepted before the first could time out, so room was made for them.
    let connecting = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(&address).await.unwrap());
    }
    let connected = connecting.elapsed();
    assert!(
        connected < Duration::from_secs(10),
        "connecting took {connected:?}: the function stopped accepting"
    );

    // A real request still gets through at once.
    let token = finapp_tests::user_token(&*env.deps().await, "patient").await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) = send(
        client
            .request(Method::GET, format!("{}/status", function.base_url))
            .bearer_auth(&token),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(waited < Duration::from_millis(100), "waited {waited:?}");

    // Every idle connection is closed: made room for, or timed out.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (n, mut stream) in idle.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(left, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "idle connection {n} still open after the header timeout"
        );
    }
    let refusals = function
        .process
        .output()
        .iter()
        .filter(|line| line.contains("accept failed"))
        .count();
    // Room is made before the limit is reached, so accept never fails here;
    // if it did, it would be logged.
    assert_eq!(refusals, 0, "{:?}", function.process.output());
}

#[tokio::test]
async fn a_burst_far_past_the_in_flight_limit_gets_answers_or_fast_503s() {
    let env = TestEnv::new();
    let mut command = Command::new(function_binary("status"));
    command
        .env_clear()
        .env("PORT", "0")
        .env("HTTP_MAX_IN_FLIGHT", "64")
        .envs(env.vars());
    let function = FunctionProcess::spawn(command).await;
    let token = finapp_tests::user_token(&*env.deps().await, "crowd").await;
    let token = &token.to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    let requests = (0..2000).map(|_| {
        let request = client
            .get(format!("{}/status", function.base_url))
            .bearer_auth(token);
        async move {
            let started = Instant::now();
            let response = request.send().await.expect("every request is answered");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            (status, retry_after, started.elapsed())
        }
    });
    let outcomes = futures_util::future::join_all(requests).await;

    let ok = outcomes
        .iter()
        .filter(|(status, ..)| *status == 200)
        .count();
    let shed: Vec<_> = outcomes
        .iter()
        .filter(|(status, ..)| *status == 503)
        .collect();
    assert_eq!(ok + shed.len(), 2000, "other statuses: {outcomes:?}");
    assert!(ok > 0, "nothing was served");
    assert!(
        shed.iter().all(|(_, retry_after, _)| retry_after.is_some()),
        "a 503 without Retry-After"
    );
    let slowest = outcomes.iter().map(|(.., took)| *took).max().unwrap();
    assert!(
        slowest < Duration::from_secs(5),
        "a request waited {slowest:?}"
    );
}
