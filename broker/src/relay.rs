//! The outbox relay: the one part of the bundle that publishes events.
//!
//! One relay publishes at a time: each round it takes or renews the relay
//! lock for [`LEASE`] (a relay that finds another holding it waits its
//! turn), reads up to [`BATCH`] records, signs an event token for each,
//! publishes them oldest first on one confirm-mode channel, waits for the
//! confirms together, and deletes the records the broker took. A record whose
//! publish failed stays for the next round; a relay that died leaves the lock
//! to the next once its lease ends. Before publishing, the relay makes the
//! change each record carries, if its request has not (`store::effects`). A record's `traceparent` (the span of the
//! request that recorded it) goes out as the message's `traceparent` header.
//! The consumer records each event id once, so a record published twice (a
//! crash between confirm and delete) counts once.
//!
//! notify-consumer runs [`Relay::run`] beside its consumer on Kubernetes
//! (a round every [`IDLE_POLL`] while idle, the next at once after a full
//! batch); its Lambda handler runs [`Relay::drain`] on a schedule.

use std::{
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

use secrecy::SecretString;

use finapp_shared::{
    Deps,
    auth::TokenKeys,
    metrics,
    store::{Applied, OutboxBacklog, OutboxRecord, Store, StoreError},
};

use crate::publisher::{Outgoing, PublishError, Publisher};

/// Most records read and published per round.
pub const BATCH: usize = 256;
/// How long the relay lock lasts unrenewed: well beyond a round's worst case
/// (a connect and a batch's confirms, [`crate::topology::BROKER_TIMEOUT`] each),
/// and how long a relay that died keeps the next one waiting.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often a backlog deeper than a batch is re-estimated (each estimate
/// costs the server an `ANALYZE` on FerretDB).
const ESTIMATE_EVERY: Duration = Duration::from_secs(5);
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

/// What one round did; all zero when another relay held the lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// The outbox as the round found it.
    pub backlog: OutboxBacklog,
    /// Records read to publish.
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

/// What [`Relay::rounds_until`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events confirmed by the broker and deleted from the outbox.
    pub published: usize,
    /// The oldest record any round found waiting.
    pub oldest_age: Duration,
}

/// The relay's dependencies, borrowed from the process's own.
pub struct Relay<'a> {
    pub store: &'a Store,
    pub publisher: &'a Publisher,
    pub tokens: &'a TokenKeys,
    /// Names this relay in the lock.
    holder: String,
    /// The last estimate of a deep backlog, and when it was taken.
    estimate: Mutex<Option<(Instant, u64)>>,
}

impl<'a> Relay<'a> {
    /// The relay over a process's store and keys, publishing with `publisher`.
    pub fn new(deps: &'a Deps, publisher: &'a Publisher) -> Self {
        Self {
            store: &deps.store,
            publisher,
            tokens: &deps.tokens,
            holder: uuid::Uuid::new_v4().to_string(),
            estimate: Mutex::new(None),
        }
    }

    /// One round: hold the lock, read a batch, report the backlog, publish, delete.
    pub async fn round(&self) -> Result<Round, RelayError> {
        if !self.store.hold_relay_lock(&self.holder, LEASE).await? {
            return Ok(Round::default());
        }
        let records = self.store.next_outbox_batch(BATCH).await?;
        let backlog = self.backlog(&records).await?;
        metrics::outbox_backlog(backlog.depth, backlog.oldest_age);
        let mut round = Round {
            backlog,
            claimed: records.len(),
            ..Round::default()
        };
        if records.is_empty() {
            return Ok(round);
        }
        let oldest_age_ms = u64::try_from(backlog.oldest_age.as_millis()).unwrap_or(u64::MAX);
        if backlog.oldest_age >= LATE {
            tracing::info!(depth = backlog.depth, oldest_age_ms, "outbox backlog");
        } else {
            tracing::debug!(depth = backlog.depth, oldest_age_ms, "outbox backlog");
        }
        let records = self.finish_requests(records).await?;
        if records.is_empty() {
            return Ok(round);
        }
        let tokens: Vec<SecretString> = records
            .iter()
            .map(|record| self.tokens.issue_event(&record.event.username))
            .collect();
        let bodies: Vec<Vec<u8>> = records
            .iter()
            .map(|record| serde_json::to_vec(&record.event).expect("an Event always serializes"))
            .collect();
        let messages = records
            .iter()
            .zip(&bodies)
            .zip(&tokens)
            .map(|((record, body), token)| {
                Outgoing::event(&record.event, body, &record.id, token)
                    .with_traceparent(record.traceparent.as_deref())
            })
            .collect();
        let taken = self.publisher.publish_batch(messages).await?;
        let published: Vec<&str> = records
            .iter()
            .zip(taken)
            .filter_map(|(record, taken)| taken.then_some(record.id.as_str()))
            .collect();
        if published.len() < records.len() {
            tracing::warn!(
                count = records.len() - published.len(),
                "broker refused outbox events; they stay for the next round"
            );
        }
        self.store.forget_outbox(&published).await?;
        round.published = published.len();
        metrics::events_relayed(published.len() as u64);
        Ok(round)
    }

    /// Makes the effect of every record that carries one, so no event is
    /// published before the change it reports is stored: a request that
    /// stopped between its outbox record and its change is finished here
    /// (see `store::effects`); for the others it is a no-op. A record whose
    /// change cannot be made (its username was taken by another sign-up) is
    /// deleted unpublished. Fails, leaving the batch for the next round, when
    /// any change fails.
    async fn finish_requests(
        &self,
        records: Vec<OutboxRecord>,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        let outcomes = self.store.apply_effects(&records).await?;
        let (ready, refused): (Vec<_>, Vec<_>) = records
            .into_iter()
            .zip(outcomes)
            .partition(|(_, applied)| *applied == Applied::Done);
        if !refused.is_empty() {
            let ids: Vec<&str> = refused
                .iter()
                .map(|(record, _)| record.id.as_str())
                .collect();
            tracing::info!(
                count = ids.len(),
                "outbox events of refused sign-ups dropped unpublished"
            );
            self.store.forget_outbox(&ids).await?;
        }
        Ok(ready.into_iter().map(|(record, _)| record).collect())
    }

    /// The backlog `batch` shows; when it is a full batch, the depth is the
    /// server's estimate, taken at most every [`ESTIMATE_EVERY`].
    async fn backlog(&self, batch: &[OutboxRecord]) -> Result<OutboxBacklog, StoreError> {
        let mut backlog = OutboxBacklog::of(batch);
        if batch.len() < BATCH {
            *self.estimate.lock().expect("never poisoned") = None;
            return Ok(backlog);
        }
        let cached = *self.estimate.lock().expect("never poisoned");
        let depth = match cached {
            Some((at, depth)) if at.elapsed() < ESTIMATE_EVERY => depth,
            _ => {
                let depth = self.store.outbox_depth_estimate().await?;
                *self.estimate.lock().expect("never poisoned") = Some((Instant::now(), depth));
                depth
            }
        };
        backlog.depth = backlog.depth.max(depth);
        Ok(backlog)
    }

    /// Runs rounds until `shutdown` resolves: the next at once after a full
    /// batch, after [`IDLE_POLL`] otherwise, with backoff after a failure. A
    /// round in progress is finished first; then the lock is given up.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        self.rounds_until(shutdown).await;
        self.release().await;
    }

    /// Runs rounds as [`Relay::run`] does until `stop` resolves, keeping the
    /// lock; returns what they published and the oldest backlog they met.
    /// The scheduled Lambda invocation runs this up to its deadline.
    pub async fn rounds_until(&self, stop: impl Future<Output = ()>) -> Totals {
        tokio::pin!(stop);
        let mut totals = Totals::default();
        let mut backoff = MIN_BACKOFF;
        loop {
            let pause = match self.round().await {
                Ok(round) => {
                    backoff = MIN_BACKOFF;
                    totals.published += round.published;
                    totals.oldest_age = totals.oldest_age.max(round.backlog.oldest_age);
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
                () = &mut stop => return totals,
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
        let drained = loop {
            match self.round().await {
                Ok(round) => {
                    published += round.published;
                    if !round.full() || started.elapsed() >= budget {
                        break Ok(published);
                    }
                }
                Err(err) => break Err(err),
            }
        };
        self.release().await;
        drained
    }

    /// Gives the lock up, so the next relay starts at once. Best effort: a
    /// lock not given up runs out after [`LEASE`].
    async fn release(&self) {
        if let Err(err) = self.store.release_relay_lock(&self.holder).await {
            tracing::warn!(error = %err, "relay lock not released; it runs out by itself");
        }
    }
}
