//! The plain HTTP server (containers, Kubernetes): hyper's HTTP/1 connections,
//! a header-read deadline, which also closes connections idle between
//! requests, and a cap on open connections kept below the process's open-file
//! limit.
//!
//! At the cap, the oldest connection that has not sent a request yet is closed
//! to make room, so idle or slow-loris connections can never keep a real
//! client out, and a failed accept (EMFILE) is logged and retried.
//!
//! The deadline is kept here rather than by hyper's `header_read_timeout`,
//! which arms and drops a timer for every request and makes the connection
//! try to parse a request head once more per request (three parses instead of
//! two under callgrind; BENCHMARKS.md, section 3). Here a request stores one
//! number when it starts and one when it is answered, and one thread looks at
//! every connection's deadline a few times per timeout. The thread, not a
//! tokio timer: a timer always pending makes each idle worker work out when
//! to wake every time it parks, a cost on every cheap request. The check also
//! keeps the clock an answered request reads its next deadline from
//! ([`CHECKED_AT_MS`]).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{net::TcpListener, sync::Semaphore, task::AbortHandle};
use tokio_util::task::AbortOnDropHandle;

use crate::config::HttpLimits;

/// Descriptors kept free for everything but client connections: MongoDB's
/// pool, the broker, logs, the binary's own files.
const RESERVED_FILES: usize = 64;
/// How long to wait before accepting again after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How many times per header-read timeout the deadlines are checked: a
/// connection past its deadline is closed at most a fifth of it late (a
/// tenth for the check, a tenth for the clock it was set by).
const CHECKS_PER_TIMEOUT: u32 = 10;

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (for up to [`SHUTDOWN_GRACE`]).
pub async fn run(
    listener: TcpListener,
    app: impl Answers,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits
        .max_connections
        .min(file_limit().saturating_sub(RESERVED_FILES))
        .max(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    // A response's head and body copied into one buffer and sent with one
    // write: the bodies here are small JSON, and queueing the two for a
    // vectored write costs hyper more than the copy (about 590 instructions
    // per request; BENCHMARKS.md, section 3).
    http.writev(false);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let open = Open::default();
    let header_read_timeout = limits.header_read_timeout;
    let idle_allowance = idle_allowance(header_read_timeout);
    // Stopped with the server, also when this future is dropped unfinished.
    let _deadlines = open.check_deadlines(header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                open.evict_oldest();
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::error!(error = %err, max_connections, "accept failed");
                    open.evict_oldest();
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = open.push(max_connections, header_read_timeout);
        let service = Tracked {
            peer: app.wants_peer_address().then_some(peer),
            app: app.clone(),
            connection: Arc::clone(&connection),
            idle_allowance,
        };
        let served = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        // Closing the connection aborts this task, which drops the connection
        // and so closes its socket: nothing but the connection is polled.
        let task = tokio::spawn(async move {
            let _slot = slot;
            if let Err(err) = served.await {
                tracing::debug!(error = %err, "connection closed");
            }
        });
        connection.started(task.abort_handle());
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
}

/// What the server serves: an answer for each request. `http::App` is the
/// one the functions serve; asked through `&self`, it is not cloned per
/// request as a tower service served through hyper-util would be.
pub trait Answers: Clone + Send + Sync + 'static {
    type Future: Future<Output = Result<axum::response::Response, Infallible>> + Send + 'static;

    fn answer(&self, request: hyper::Request<Incoming>) -> Self::Future;

    /// Whether its requests need the client's TCP address, as axum's [`ConnectInfo`].
    fn wants_peer_address(&self) -> bool;
}

/// A connection's deadline while one of its requests is being answered: none.
const ANSWERING: u64 = u64::MAX;

/// Milliseconds since the first call, the clock of the deadlines.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(ANSWERING - 1)
}

fn deadline_after(timeout: Duration) -> u64 {
    now_ms().saturating_add(millis(timeout))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(ANSWERING - 1)
}

/// [`now_ms`] as the latest check of the deadlines read it: what an answered
/// request sets its connection's next deadline from, a clock read less per
/// request. It lags by at most one check, which the deadline adds.
static CHECKED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// How long after [`CHECKED_AT_MS`] a connection answered now must send its
/// next request's headers: `timeout`, and the check the clock may lag by.
fn idle_allowance(timeout: Duration) -> u64 {
    millis(timeout + timeout / CHECKS_PER_TIMEOUT)
}

/// What the accept loop knows of one open connection.
struct Connection {
    /// Set by its first request: from then on it is never closed to make room.
    active: AtomicBool,
    /// By when (on [`now_ms`]'s clock) its next request's headers must have
    /// arrived; [`ANSWERING`] while a request is being answered.
    deadline: AtomicU64,
    /// The task that serves it, which closing it aborts.
    task: Mutex<Task>,
}

/// A connection's task, as [`Connection::close`] finds it.
enum Task {
    /// Registered, its task not yet spawned.
    Starting,
    Running(AbortHandle),
    Closed,
}

impl Task {
    /// Whether its connection is served, or about to be.
    fn is_open(&self) -> bool {
        match self {
            Task::Starting => true,
            Task::Running(handle) => !handle.is_finished(),
            Task::Closed => false,
        }
    }
}

impl Connection {
    fn task(&self) -> std::sync::MutexGuard<'_, Task> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its task is `handle`; aborted at once if it was closed while starting.
    fn started(&self, handle: AbortHandle) {
        let mut task = self.task();
        match *task {
            Task::Closed => handle.abort(),
            _ => *task = Task::Running(handle),
        }
    }

    /// Closes it; false if it was closed already.
    fn close(&self) -> bool {
        let task = std::mem::replace(&mut *self.task(), Task::Closed);
        let open = task.is_open();
        if let Task::Running(handle) = task {
            handle.abort();
        }
        open
    }

    /// Neither closed nor ever sent a request.
    fn evictable(&self) -> bool {
        !self.active.load(Ordering::Relaxed) && self.task().is_open()
    }
}

/// Every open connection, oldest first.
#[derive(Clone, Default)]
struct Open(Arc<Mutex<Vec<Weak<Connection>>>>);

impl Open {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Connection>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection that must send its first headers within
    /// `header_read_timeout`; its task is given by [`Connection::started`].
    fn push(&self, max_connections: usize, header_read_timeout: Duration) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            active: AtomicBool::new(false),
            deadline: AtomicU64::new(deadline_after(header_read_timeout)),
            task: Mutex::new(Task::Starting),
        });
        let mut open = self.lock();
        // Closed connections go when they could outnumber the open ones.
        if open.len() >= max_connections {
            open.retain(|connection| connection.strong_count() > 0);
        }
        open.push(Arc::downgrade(&connection));
        connection
    }

    /// Closes the oldest connection that has not sent a request; false if there is none.
    fn evict_oldest(&self) -> bool {
        let open = self.lock();
        let oldest = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|connection| connection.evictable());
        drop(open);
        let evicted = oldest.is_some_and(|connection| connection.close());
        if evicted {
            tracing::debug!("closed the oldest connection without a request to make room");
        }
        evicted
    }

    /// Closes every connection past its deadline; forgets the closed ones.
    fn close_overdue(&self) {
        let now = now_ms();
        CHECKED_AT_MS.fetch_max(now, Ordering::Relaxed);
        self.lock().retain(|connection| {
            let Some(connection) = connection.upgrade() else {
                return false;
            };
            if connection.deadline.load(Ordering::Relaxed) <= now && connection.close() {
                tracing::debug!("closed a connection that sent no complete request in time");
            }
            true
        });
    }

    /// Runs [`Open::close_overdue`] [`CHECKS_PER_TIMEOUT`] times per
    /// `timeout` on a thread of its own until the last clone of `self` is
    /// dropped. Should the thread not start, a task does it instead, until
    /// the handle returned is dropped.
    fn check_deadlines(&self, timeout: Duration) -> Option<AbortOnDropHandle<()>> {
        CHECKED_AT_MS.fetch_max(now_ms(), Ordering::Relaxed);
        // The deadlines are in milliseconds: checking more often finds nothing new.
        let every = (timeout / CHECKS_PER_TIMEOUT).max(Duration::from_millis(1));
        let open = Arc::downgrade(&self.0);
        let started = std::thread::Builder::new()
            .name("deadlines".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(open) = open.upgrade() else { return };
                    Open(open).close_overdue();
                }
            });
        let Err(err) = started else { return None };
        tracing::warn!(error = %err, "no thread for the connection deadlines; checking them on a task");
        let open = self.clone();
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut checks = tokio::time::interval(every);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                checks.tick().await;
                open.close_overdue();
            }
        })))
    }
}

/// Keeps its connection's deadline: none while a request is answered, then
/// `header_read_timeout` for the next request's headers (which also bounds
/// how long it may stay idle). Flags the connection as active on its first
/// request, so it is never evicted, and gives each request the peer's
/// address as axum's [`ConnectInfo`] if the app wants it.
#[derive(Clone)]
struct Tracked<A> {
    app: A,
    connection: Arc<Connection>,
    /// [`idle_allowance`] of the header-read timeout.
    idle_allowance: u64,
    peer: Option<SocketAddr>,
}

impl<A: Answers> hyper::service::Service<hyper::Request<Incoming>> for Tracked<A> {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Answering<A::Future>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        self.connection.active.store(true, Ordering::Relaxed);
        self.connection.deadline.store(ANSWERING, Ordering::Relaxed);
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        Answering {
            inner: self.app.answer(request),
            connection: Arc::clone(&self.connection),
            idle_allowance: self.idle_allowance,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer; once it is ready, the connection's next deadline starts.
    struct Answering<F> {
        #[pin]
        inner: F,
        connection: Arc<Connection>,
        idle_allowance: u64,
    }
}

impl<F: Future> Future for Answering<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        let next = CHECKED_AT_MS
            .load(Ordering::Relaxed)
            .saturating_add(*this.idle_allowance);
        this.connection.deadline.store(next, Ordering::Relaxed);
        Poll::Ready(answer)
    }
}

/// The process's open-file limit, raised first to its hard limit, as the Go
/// runtime does: the soft limit (often 1,024) is a default, not a decision.
fn file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return usize::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// A connection registered in `open` with a task that serves until closed.
    fn serving(open: &Open) -> (Arc<Connection>, tokio::task::JoinHandle<()>) {
        let connection = open.push(10, TIMEOUT);
        let task = tokio::spawn(std::future::pending());
        connection.started(task.abort_handle());
        (connection, task)
    }

    /// Whether closing `task` ended it, within a deadline.
    async fn aborted(task: tokio::task::JoinHandle<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_ok_and(|ended| ended.is_err_and(|err| err.is_cancelled()))
    }

    #[tokio::test]
    async fn the_oldest_connection_without_a_request_is_evicted_first() {
        let open = Open::default();
        let (first, first_task) = serving(&open);
        let (_second, second_task) = serving(&open);
        let (third, third_task) = serving(&open);
        first.active.store(true, Ordering::Relaxed);

        assert!(open.evict_oldest());
        assert!(aborted(second_task).await);
        assert!(
            !first_task.is_finished(),
            "an active connection was evicted"
        );
        assert!(!third_task.is_finished());
        third.close();
        assert!(aborted(third_task).await);
        assert!(
            !open.evict_oldest(),
            "a closed connection counts as a candidate"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_before_its_task_starts_is_aborted_once_it_does() {
        let open = Open::default();
        let connection = open.push(10, TIMEOUT);
        assert!(connection.close());
        assert!(!connection.close(), "closed twice");
        let task = tokio::spawn(std::future::pending());
        connection.started(task.abort_handle());
        assert!(aborted(task).await);
    }

    #[test]
    fn closed_connections_do_not_accumulate() {
        let open = Open::default();
        for _ in 0..100 {
            let _closed = open.push(8, TIMEOUT);
        }
        assert!(open.lock().len() <= 9);
    }

    #[tokio::test]
    async fn only_connections_past_their_deadline_are_closed() {
        let open = Open::default();
        let (overdue, overdue_task) = serving(&open);
        let (answering, answering_task) = serving(&open);
        let (_waiting, waiting_task) = serving(&open);
        overdue.deadline.store(now_ms(), Ordering::Relaxed);
        answering.deadline.store(ANSWERING, Ordering::Relaxed);

        open.close_overdue();
        assert!(aborted(overdue_task).await);
        assert!(!answering_task.is_finished());
        assert!(!waiting_task.is_finished());
        drop(overdue);
        open.close_overdue();
        assert_eq!(open.lock().len(), 2, "a closed connection is still tracked");
    }
}
