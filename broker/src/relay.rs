//! The outbox relay: the one part of the bundle that publishes events.
//!
//! Each round claims the oldest outbox records under a lease (up to
//! [`BATCH`]), signs an event token for each, publishes them in order on one
//! confirm-mode channel, waits for the confirms together, and deletes the
//! records the broker took. A record whose publish failed is released for the
//! next round; one left behind by a relay that died is taken again once its
//! lease ([`LEASE`]) ends. A record's `traceparent` (the span of the request
//! that recorded it) goes out as the message's `traceparent` header. The consumer records each event id once, so a
//! record published twice (a crash between confirm and delete) counts once.
//!
//! notify-consumer runs [`Relay::run`] beside its consumer on Kubernetes
//! (a round every [`IDLE_POLL`] while idle, the next at once after a full
//! batch); its Lambda handler runs [`Relay::drain`] on a schedule.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use secrecy::SecretString;

use finapp_shared::{
    Deps,
    auth::TokenKeys,
    metrics,
    store::{OutboxBacklog, Store, StoreError},
};

use crate::publisher::{Outgoing, PublishError, Publisher};

/// Most records claimed and published per round.
pub const BATCH: usize = 128;
/// How long a claim holds its records: well beyond a round's worst case
/// (a connect and a batch's confirms, [`crate::topology::BROKER_TIMEOUT`] each).
pub const LEASE: Duration = Duration::from_secs(10);
/// The pause between rounds that found less than a full batch: the delivery
/// latency added while the outbox is quiet.
pub const IDLE_POLL: Duration = Duration::from_millis(150);
/// The pause after a failed round, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A backlog whose oldest record is older than this is logged at `info`:
/// delivery is late. Younger backlogs are the normal traffic of one round.
pub const LATE: Duration = Duration::from_secs(1);

/// Why a round stopped early. Its records stay in the outbox.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The outbox as the round found it.
    pub backlog: OutboxBacklog,
    pub claimed: usize,
    /// Confirmed by the broker and deleted from the outbox.
    pub published: usize,
}

impl Round {
    /// Whether the round took a whole batch, so more is probably waiting.
    pub fn full(&self) -> bool {
        self.claimed >= BATCH
    }
}

/// The relay's dependencies, borrowed from the process's own.
pub struct Relay<'a> {
    pub store: &'a Store,
    pub publisher: &'a Publisher,
    pub tokens: &'a TokenKeys,
}

impl<'a> Relay<'a> {
    /// The relay over a process's store and keys, publishing with `publisher`.
    pub fn new(deps: &'a Deps, publisher: &'a Publisher) -> Self {
        Self {
            store: &deps.store,
            publisher,
            tokens: &deps.tokens,
        }
    }

    /// One round: report the backlog, claim, publish, delete.
    pub async fn round(&self) -> Result<Round, RelayError> {
        let backlog = self.store.outbox_backlog().await?;
        metrics::outbox_backlog(backlog.depth, backlog.oldest_age);
        let mut round = Round {
            backlog,
            ..Round::default()
        };
        if backlog.depth == 0 {
            return Ok(round);
        }
        let oldest_age_ms = u64::try_from(backlog.oldest_age.as_millis()).unwrap_or(u64::MAX);
        if backlog.oldest_age >= LATE {
            tracing::info!(depth = backlog.depth, oldest_age_ms, "outbox backlog");
        } else {
            tracing::debug!(depth = backlog.depth, oldest_age_ms, "outbox backlog");
        }
        let claim = self.store.claim_outbox(BATCH, LEASE).await?;
        round.claimed = claim.records.len();
        if claim.records.is_empty() {
            return Ok(round);
        }
        let tokens: Vec<SecretString> = claim
            .records
            .iter()
            .map(|record| self.tokens.issue_event(&record.event.username))
            .collect();
        let bodies: Vec<Vec<u8>> = claim
            .records
            .iter()
            .map(|record| serde_json::to_vec(&record.event).expect("an Event always serializes"))
            .collect();
        let messages = claim
            .records
            .iter()
            .zip(&bodies)
            .zip(&tokens)
            .map(|((record, body), token)| {
                Outgoing::event(&record.event, body, &record.id, token)
                    .with_traceparent(record.traceparent.as_deref())
            })
            .collect();
        let ids: Vec<&str> = claim
            .records
            .iter()
            .map(|record| record.id.as_str())
            .collect();
        let taken = match self.publisher.publish_batch(messages).await {
            Ok(taken) => taken,
            Err(err) => {
                self.release(&claim.id, &ids).await;
                return Err(err.into());
            }
        };
        let mut published = Vec::with_capacity(ids.len());
        let mut refused = Vec::new();
        for (id, taken) in ids.iter().copied().zip(taken) {
            if taken {
                published.push(id);
            } else {
                refused.push(id);
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                count = refused.len(),
                "broker refused outbox events; they stay for the next round"
            );
            self.release(&claim.id, &refused).await;
        }
        self.store.forget_outbox(&published).await?;
        round.published = published.len();
        metrics::events_relayed(published.len() as u64);
        Ok(round)
    }

    /// Best effort: a release that fails only delays the records by a lease.
    async fn release(&self, claim: &str, ids: &[&str]) {
        if let Err(err) = self.store.release_outbox(claim, ids).await {
            tracing::warn!(error = %err, "outbox lease not released; it runs out by itself");
        }
    }

    /// Runs rounds until `shutdown` resolves: the next at once after a full
    /// batch, after [`IDLE_POLL`] otherwise, with backoff after a failure. A
    /// round in progress is finished first.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = MIN_BACKOFF;
        loop {
            let pause = match self.round().await {
                Ok(round) => {
                    backoff = MIN_BACKOFF;
                    if round.published > 0 {
                        tracing::debug!(published = round.published, "outbox events relayed");
                    }
                    if round.full() {
                        Duration::ZERO
                    } else {
                        IDLE_POLL
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        cause = ?std::error::Error::source(&err),
                        retry_in = ?backoff,
                        "outbox relay round failed"
                    );
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Runs rounds until one takes less than a full batch or `budget` has
    /// passed; returns how many events were published. For the scheduled
    /// Lambda invocation, which must end before its timeout.
    pub async fn drain(&self, budget: Duration) -> Result<usize, RelayError> {
        let started = Instant::now();
        let mut published = 0;
        loop {
            let round = self.round().await?;
            published += round.published;
            if !round.full() || started.elapsed() >= budget {
                return Ok(published);
            }
        }
    }
}
