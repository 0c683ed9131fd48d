//! No single client can exhaust a function: idle connections under a small
//! open-file limit, headers sent too slowly, and a burst far past the
//! in-flight limit.

use std::time::{Duration, Instant};

use finapp_tests::{FunctionProcess, TestEnv, function_binary, send};
use reqwest::Method;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    process::Command,
};

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

/// Reads from `stream` until the server closes it; how long that took, or
/// `None` if it stayed open until `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Sends one keep-alive `GET /healthz` on `stream` and reads its answer.
async fn healthz(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: function\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"}") {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("no answer within 5 s")
            .unwrap();
        assert!(read > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..read]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn headers_sent_too_slowly_or_an_idle_keep_alive_are_closed_and_a_busy_one_is_not() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let env = TestEnv::new();
    let mut command = Command::new(function_binary("status"));
    command
        .env_clear()
        .env("PORT", "0")
        .env(
            "HTTP_HEADER_READ_TIMEOUT_MS",
            TIMEOUT.as_millis().to_string(),
        )
        .envs(env.vars());
    let function = FunctionProcess::spawn(command).await;
    let address = function.base_url.trim_start_matches("http://").to_owned();

    // A slow loris: a header byte every 100 ms, never a complete request.
    let mut loris = TcpStream::connect(&address).await.unwrap();
    let trickle = async {
        loris
            .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if loris.write_all(b"a").await.is_err() {
                return Some(started.elapsed());
            }
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(100), loris.read(&mut byte)).await
            {
                return Some(started.elapsed());
            }
        }
        None
    };
    // A keep-alive connection that goes quiet after one request.
    let mut quiet = TcpStream::connect(&address).await.unwrap();
    let idle = async {
        healthz(&mut quiet).await;
        closed_within(&mut quiet, Duration::from_secs(10)).await
    };
    // One that keeps sending requests, each well within the timeout, for
    // three times the timeout.
    let mut busy = TcpStream::connect(&address).await.unwrap();
    let steady = async {
        let started = Instant::now();
        while started.elapsed() < 3 * TIMEOUT {
            healthz(&mut busy).await;
            tokio::time::sleep(TIMEOUT / 10).await;
        }
    };
    let (trickled, idled, ()) = tokio::join!(trickle, idle, steady);

    let trickled = trickled.expect("the slow loris was still connected after 10 s");
    assert!(
        trickled >= TIMEOUT * 8 / 10,
        "the slow loris was closed after {trickled:?}, before its timeout"
    );
    let idled = idled.expect("the idle keep-alive was still open after 10 s");
    assert!(
        idled >= TIMEOUT * 8 / 10,
        "the idle keep-alive was closed after {idled:?}, before its timeout"
    );
    // The busy one is still served.
    healthz(&mut busy).await;
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
