//! The plain HTTP server (containers, Kubernetes): hyper's HTTP/1 connections
//! with a header-read timeout, which also closes connections idle between
//! requests, and a cap on open connections kept below the process's open-file
//! limit.
//!
//! At the cap, the oldest connection that has not sent a request yet is closed
//! to make room, so idle or slow-loris connections can never keep a real
//! client out, and a failed accept (EMFILE) is logged and retried.

use std::{
    collections::VecDeque,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot},
};

use crate::config::HttpLimits;

/// Descriptors kept free for everything but client connections: MongoDB's
/// pool, the broker, logs, the binary's own files.
const RESERVED_FILES: usize = 64;
/// How long to wait before accepting again after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (for up to [`SHUTDOWN_GRACE`]).
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits
        .max_connections
        .min(file_limit().saturating_sub(RESERVED_FILES))
        .max(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let waiting = Waiting::default();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                waiting.evict_oldest();
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
                    waiting.evict_oldest();
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (active, evicted) = waiting.push(max_connections);
        let service = MarkActive {
            inner: TowerToHyperService::new(app.clone()),
            active,
            peer,
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                result = connection => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection closed");
                    }
                }
                // Dropping the connection closes its socket. A candidate
                // dropped without a signal (it became active) is no eviction.
                Ok(()) = evicted => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
}

/// Connections that have not sent a request yet, oldest first.
#[derive(Clone, Default)]
struct Waiting(Arc<Mutex<VecDeque<Candidate>>>);

struct Candidate {
    active: Arc<AtomicBool>,
    evict: oneshot::Sender<()>,
}

impl Candidate {
    fn eligible(&self) -> bool {
        !self.active.load(Ordering::Relaxed) && !self.evict.is_closed()
    }
}

impl Waiting {
    /// Registers a new connection; returns its activity flag and its eviction signal.
    fn push(&self, max_connections: usize) -> (Arc<AtomicBool>, oneshot::Receiver<()>) {
        let active = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        let mut queue = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Connections that sent a request or closed are no candidates: drop
        // them once they could outnumber the open ones.
        if queue.len() >= max_connections {
            queue.retain(Candidate::eligible);
        }
        queue.push_back(Candidate {
            active: Arc::clone(&active),
            evict,
        });
        (active, evicted)
    }

    /// Closes the oldest connection that has not sent a request; false if there is none.
    fn evict_oldest(&self) -> bool {
        let mut queue = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(candidate) = queue.pop_front() {
            if candidate.eligible() && candidate.evict.send(()).is_ok() {
                tracing::debug!("closed the oldest connection without a request to make room");
                return true;
            }
        }
        false
    }
}

/// Flags its connection as active on the first request, so it is never
/// evicted, and gives each request the peer's address as axum's [`ConnectInfo`].
#[derive(Clone)]
struct MarkActive<S> {
    inner: S,
    active: Arc<AtomicBool>,
    peer: SocketAddr,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for MarkActive<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut request: hyper::Request<B>) -> Self::Future {
        self.active.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.inner.call(request)
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

    #[test]
    fn the_oldest_connection_without_a_request_is_evicted_first() {
        let waiting = Waiting::default();
        let (first_active, mut first) = waiting.push(10);
        let (_, mut second) = waiting.push(10);
        let (_, mut third) = waiting.push(10);
        first_active.store(true, Ordering::Relaxed);

        assert!(waiting.evict_oldest());
        assert!(
            first.try_recv().is_err(),
            "an active connection was evicted"
        );
        assert!(second.try_recv().is_ok());
        assert!(third.try_recv().is_err());
        drop(third);
        assert!(
            !waiting.evict_oldest(),
            "a closed connection counts as a candidate"
        );
    }

    #[test]
    fn closed_connections_do_not_accumulate() {
        let waiting = Waiting::default();
        for _ in 0..100 {
            let _closed = waiting.push(8);
        }
        assert!(waiting.0.lock().unwrap().len() <= 9);
    }
}
