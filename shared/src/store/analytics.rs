//! `user_analytics` and `analytics_counters`: every event the consumer
//! recorded, once per id, and the per-user counters `GET /analytics` reads.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt as _;
use mongodb::{
    bson::{DateTime, Document, doc},
    error::ErrorKind,
};
use serde::{Deserialize, Serialize};

use super::{Context as _, DUPLICATE_KEY, Store, StoreError, as_u64, is_duplicate_key};

/// A document of `user_analytics`: the original's `username`, `event` and
/// `timestamp`, plus the event's type and id. The id is also `_id`, so a
/// redelivered event cannot be stored twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub username: String,
    pub event: String,
    pub timestamp: DateTime,
    pub received_at: DateTime,
    /// Set while the event is stored but not yet counted in `analytics_counters`;
    /// a redelivered copy of a pending event is counted (once), of a counted one never.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// What `GET /analytics` reports.
///
/// Summed from `analytics_counters` (one small document per user), never from
/// the events themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnalyticsSummary {
    pub total_events: u64,
    pub total_logins: u64,
    pub total_financing_option_checks: u64,
    pub logins_per_user: BTreeMap<String, u64>,
    pub financing_checks_per_user: BTreeMap<String, u64>,
    /// Keyed by event type; events the original wrote have none and count as `untyped`.
    pub events_per_type: BTreeMap<String, u64>,
}

/// The substrings by which the original counted logins and financing checks,
/// applied to every event's text so both generations of events count alike.
pub const LOGIN_MARKER: &str = "logged in";
pub const FINANCING_CHECK_MARKER: &str = "checked financing options";

/// The summary a process read last, and when (see [`Store::analytics_summary_cached`]).
#[derive(Debug)]
pub(super) struct SummaryCache {
    ttl: Duration,
    held: Mutex<Option<(Instant, Arc<AnalyticsSummary>)>>,
    /// Held by the one request reading a new summary.
    refresh: tokio::sync::Mutex<()>,
}

impl SummaryCache {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            held: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The summary held, and whether it is still fresh.
    fn held(&self) -> Option<(Arc<AnalyticsSummary>, bool)> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.as_ref()
            .map(|(at, summary)| (Arc::clone(summary), at.elapsed() < self.ttl))
    }

    fn hold(&self, summary: Arc<AnalyticsSummary>) {
        *self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), summary));
    }
}

/// Stripes of the per-user lock around counter updates (see [`Store::record_analytics`]).
const COUNTER_STRIPES: usize = 64;

#[derive(Debug)]
pub(super) struct CounterLocks([tokio::sync::Mutex<()>; COUNTER_STRIPES]);

impl CounterLocks {
    pub(super) fn new() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }

    /// The lock that serialises writes to `user`'s counter document.
    fn of(&self, user: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::Hasher as _;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(user.as_bytes());
        &self.0[hasher.finish() as usize % COUNTER_STRIPES]
    }
}

impl Store {
    /// Stores analytics events with one unordered `insert_many`; for each
    /// document, `false` when its id was already stored (before this call or
    /// earlier in `events`). Any other failure fails the call: the caller
    /// retries the whole batch, and the ids make the retry store each event once.
    pub async fn insert_analytics(
        &self,
        events: &[&AnalyticsDoc],
    ) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let err = match self
            .analytics
            .insert_many(events.iter().copied())
            .ordered(false)
            .await
        {
            Ok(_) => return Ok(vec![true; events.len()]),
            Err(err) => err,
        };
        let ErrorKind::InsertMany(failure) = err.kind.as_ref() else {
            return Err(StoreError::new("insert analytics events", err));
        };
        if failure.write_concern_error.is_some() {
            return Err(StoreError::new("insert analytics events", err));
        }
        let mut inserted = vec![true; events.len()];
        for write in failure.write_errors.iter().flatten() {
            match inserted.get_mut(write.index) {
                Some(slot) if write.code == DUPLICATE_KEY => *slot = false,
                _ => return Err(StoreError::new("insert analytics events", err)),
            }
        }
        Ok(inserted)
    }

    /// Stores events (see [`Store::insert_analytics`]) and counts each one
    /// exactly once in `analytics_counters`; `true` for each event that was new.
    ///
    /// Two writes per user and two per batch, each safe to repeat: the events
    /// go in marked `pending` (one `insert_many`); each user's counters are
    /// incremented together with pushing the events' ids onto the counter
    /// document's `recent`, in one update that matches only while none of
    /// those ids is there (so a repeat is a no-op); then the batch's events
    /// lose their mark (one `update_many`), and last the ids leave each
    /// user's `recent`. A crash
    /// anywhere leaves the message unacknowledged; its redelivery finds the
    /// event stored and still pending, and counts it unless `recent` shows it
    /// counted. A redelivery of a counted event is counted never.
    ///
    /// Every write to a user's counter document is serialised within the process: FerretDB
    /// 1.24 applies an update by reading the document and writing it back whole,
    /// so two concurrent `$inc`s on one document can lose one (MongoDB applies
    /// each atomically). Several consumer processes on FerretDB could still
    /// race; on MongoDB they cannot.
    pub async fn record_analytics(
        &self,
        events: &[&AnalyticsDoc],
    ) -> Result<Vec<bool>, StoreError> {
        let inserted = self.insert_analytics(events).await?;
        let mut by_user: BTreeMap<&str, (Vec<&AnalyticsDoc>, Vec<&AnalyticsDoc>)> = BTreeMap::new();
        for (event, new) in events.iter().zip(&inserted) {
            let (fresh, seen) = by_user.entry(event.username.as_str()).or_default();
            if *new {
                fresh.push(event)
            } else {
                seen.push(event)
            }
        }
        let mut counted: Vec<&str> = Vec::new();
        let mut clear: Vec<(&str, Vec<&str>)> = Vec::with_capacity(by_user.len());
        for (user, (mut to_count, seen)) in by_user {
            let _serialised = self.counter_locks.of(user).lock().await;
            if !seen.is_empty() {
                let pending: HashSet<String> = self
                    .analytics
                    .clone_with_type::<Document>()
                    .find(doc! { "username": user, "pending": true })
                    .max_time(self.read_limit)
                    .projection(doc! { "_id": 1 })
                    .await
                    .context("find pending analytics events")?
                    .try_filter_map(
                        |doc| async move { Ok(doc.get_str("_id").ok().map(str::to_owned)) },
                    )
                    .try_collect()
                    .await
                    .context("find pending analytics events")?;
                // A copy of an event new in this same batch is pending too: count it once.
                let fresh: HashSet<&str> = to_count.iter().map(|event| event.id.as_str()).collect();
                let mut again: Vec<&AnalyticsDoc> = seen
                    .iter()
                    .copied()
                    .filter(|event| {
                        pending.contains(&event.id) && !fresh.contains(event.id.as_str())
                    })
                    .collect();
                again.sort_by(|a, b| a.id.cmp(&b.id));
                again.dedup_by(|a, b| a.id == b.id);
                to_count.extend(again);
            }
            self.count_events(user, &to_count).await?;
            counted.extend(to_count.iter().map(|event| event.id.as_str()));
            let ids: Vec<&str> = to_count
                .iter()
                .chain(&seen)
                .map(|event| event.id.as_str())
                .collect();
            clear.push((user, ids));
        }
        // One write for the whole batch: FerretDB pushes the `pending`
        // equality down, so it reads only the events still pending.
        if !counted.is_empty() {
            self.analytics
                .update_many(
                    doc! { "pending": true, "_id": { "$in": &counted } },
                    doc! { "$unset": { "pending": "" } },
                )
                .await
                .context("unmark counted analytics events")?;
        }
        // Only now, with the events unmarked, may their ids leave `recent`:
        // an event pending and not in `recent` is one not counted yet.
        for (user, ids) in clear {
            let _serialised = self.counter_locks.of(user).lock().await;
            // $pullAll: FerretDB 1.24 ignores $pull with an {$in: ...} condition.
            self.analytics_counters
                .update_one(
                    doc! { "_id": user, "recent": { "$in": &ids } },
                    doc! { "$pullAll": { "recent": &ids } },
                )
                .await
                .context("clear counted ids")?;
        }
        Ok(inserted)
    }

    /// Adds `events` (all of `user`) to the user's counters, skipping any whose
    /// id is in `recent`, i.e. already added by an earlier attempt.
    async fn count_events(&self, user: &str, events: &[&AnalyticsDoc]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.add_to_counters(user, events).await? {
            return Ok(());
        }
        // Some were counted already: one at a time, each skipped if it was.
        for event in events {
            self.add_to_counters(user, &[event]).await?;
        }
        Ok(())
    }

    /// One conditional update; `false` when some id of `events` is in `recent`.
    async fn add_to_counters(
        &self,
        user: &str,
        events: &[&AnalyticsDoc],
    ) -> Result<bool, StoreError> {
        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        let mut increments = Document::new();
        let mut add = |key: String, n: i64| {
            let total = increments.get_i64(&key).unwrap_or(0) + n;
            increments.insert(key, total);
        };
        for event in events {
            add("events".into(), 1);
            add(format!("types.{}", event.kind), 1);
            add(
                "logins".into(),
                i64::from(event.event.contains(LOGIN_MARKER)),
            );
            add(
                "financing_checks".into(),
                i64::from(event.event.contains(FINANCING_CHECK_MARKER)),
            );
        }
        // The upsert creates a missing document; on an existing one whose
        // `recent` holds an id the filter fails, the upsert's insert hits the
        // `_id`, and that duplicate key means "already counted".
        match self
            .analytics_counters
            .update_one(
                doc! { "_id": user, "recent": { "$nin": &ids } },
                doc! { "$inc": increments, "$push": { "recent": { "$each": &ids } } },
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate_key(&err) => Ok(false),
            Err(err) => Err(StoreError::new("add to analytics counters", err)),
        }
    }

    /// [`Store::analytics_summary`], answered from this process's memory for
    /// the cache's time (`ANALYTICS_CACHE_MS`) after each read. One request
    /// reads a new summary once it is due; the requests meanwhile answer with
    /// the one it replaces, or, before the first, wait for it. So a summary is
    /// at most the cache's time plus one read old, and a process reads the
    /// counters at most once per that time however many ask.
    pub async fn analytics_summary_cached(&self) -> Result<Arc<AnalyticsSummary>, StoreError> {
        let cache = &self.summary_cache;
        if cache.ttl.is_zero() {
            return Ok(Arc::new(self.analytics_summary().await?));
        }
        let held = cache.held();
        let _reading = match (held, cache.refresh.try_lock()) {
            (Some((summary, true)), _) => return Ok(summary),
            (_, Ok(reading)) => reading,
            (Some((stale, false)), Err(_)) => return Ok(stale),
            (None, Err(_)) => cache.refresh.lock().await,
        };
        // The read this one waited for, or one that ended since the check.
        if let Some((summary, true)) = cache.held() {
            return Ok(summary);
        }
        let summary = Arc::new(self.analytics_summary().await?);
        cache.hold(Arc::clone(&summary));
        Ok(summary)
    }

    /// The summary from `analytics_counters`: one read of a document per user.
    pub async fn analytics_summary(&self) -> Result<AnalyticsSummary, StoreError> {
        let mut summary = AnalyticsSummary::default();
        let mut counters = self
            .analytics_counters
            .find(doc! {})
            .max_time(self.read_limit)
            .projection(doc! { "recent": 0 })
            .await
            .context("read analytics counters")?;
        while let Some(counter) = counters
            .try_next()
            .await
            .context("read analytics counters")?
        {
            let user = counter.get_str("_id").unwrap_or("unknown").to_owned();
            let count = |key: &str| counter.get(key).and_then(as_u64).unwrap_or(0);
            summary.total_events += count("events");
            for (key, n) in [
                ("logins", &mut summary.logins_per_user),
                ("financing_checks", &mut summary.financing_checks_per_user),
            ] {
                let value = count(key);
                if value > 0 {
                    *n.entry(user.clone()).or_default() += value;
                }
            }
            if let Ok(types) = counter.get_document("types") {
                for (kind, n) in types {
                    *summary.events_per_type.entry(kind.clone()).or_default() +=
                        as_u64(n).unwrap_or(0);
                }
            }
        }
        summary.total_logins = summary.logins_per_user.values().sum();
        summary.total_financing_option_checks = summary.financing_checks_per_user.values().sum();
        Ok(summary)
    }

    /// Replaces `analytics_counters` with counts taken from every stored event,
    /// by the original's substring rules: the one-time seed for events the
    /// original wrote, and the repair if counters are ever in doubt. Run it
    /// while no consumer is recording. Returns the summary it stored.
    pub async fn rebuild_analytics_counters(&self) -> Result<AnalyticsSummary, StoreError> {
        let mut users: BTreeMap<String, Document> = BTreeMap::new();
        let mut per_user_type = self
            .analytics
            .aggregate([doc! { "$group": {
                "_id": { "user": "$username", "type": "$type" },
                "count": { "$sum": 1 },
            } }])
            .await
            .context("group analytics events")?;
        while let Some(group) = per_user_type
            .try_next()
            .await
            .context("group analytics events")?
        {
            let key = group.get_document("_id").ok();
            let user = key
                .and_then(|key| key.get_str("user").ok())
                .unwrap_or("unknown");
            let kind = key
                .and_then(|key| key.get_str("type").ok())
                .unwrap_or("untyped");
            let n = group.get("count").and_then(as_u64).unwrap_or(0) as i64;
            let counter = users.entry(user.to_owned()).or_insert_with(|| {
                doc! { "_id": user, "events": 0_i64, "logins": 0_i64, "financing_checks": 0_i64, "types": {}, "recent": [] }
            });
            let events = counter.get_i64("events").unwrap_or(0) + n;
            counter.insert("events", events);
            let types = counter.get_document_mut("types").expect("inserted above");
            let previous = types.get_i64(kind).unwrap_or(0);
            types.insert(kind, previous + n);
        }
        for (key, marker) in [
            ("logins", LOGIN_MARKER),
            ("financing_checks", FINANCING_CHECK_MARKER),
        ] {
            for (user, n) in self.count_by("$username", Some(marker), "unknown").await? {
                if let Some(counter) = users.get_mut(&user) {
                    counter.insert(key, n as i64);
                }
            }
        }
        self.analytics_counters
            .delete_many(doc! {})
            .await
            .context("clear analytics counters")?;
        if !users.is_empty() {
            self.analytics_counters
                .insert_many(users.into_values())
                .await
                .context("store analytics counters")?;
        }
        self.analytics
            .update_many(
                doc! { "pending": true },
                doc! { "$unset": { "pending": "" } },
            )
            .await
            .context("unmark pending analytics events")?;
        self.analytics_summary().await
    }

    /// The summary computed from every stored event (four scans): what the
    /// counters must always equal, and what `GET /analytics` computed before them.
    pub async fn analytics_summary_from_events(&self) -> Result<AnalyticsSummary, StoreError> {
        let logins_per_user = self
            .count_by("$username", Some(LOGIN_MARKER), "unknown")
            .await?;
        let financing_checks_per_user = self
            .count_by("$username", Some(FINANCING_CHECK_MARKER), "unknown")
            .await?;
        Ok(AnalyticsSummary {
            total_events: self
                .analytics
                .count_documents(doc! {})
                .await
                .context("count analytics events")?,
            total_logins: logins_per_user.values().sum(),
            total_financing_option_checks: financing_checks_per_user.values().sum(),
            events_per_type: self.count_by("$type", None, "untyped").await?,
            logins_per_user,
            financing_checks_per_user,
        })
    }

    /// Counts events grouped by `field`, only those whose text contains `marker`
    /// when one is given; a missing or non-string key counts under `fallback`.
    async fn count_by(
        &self,
        field: &str,
        marker: Option<&str>,
        fallback: &str,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut pipeline = Vec::new();
        if let Some(marker) = marker {
            pipeline.push(doc! { "$match": { "event": { "$regex": regex_escape(marker) } } });
        }
        pipeline.push(doc! { "$group": { "_id": field, "count": { "$sum": 1 } } });
        let mut groups = self
            .analytics
            .aggregate(pipeline)
            .await
            .context("count analytics events")?;
        let mut counts = BTreeMap::new();
        while let Some(group) = groups.try_next().await.context("count analytics events")? {
            let key = group.get_str("_id").unwrap_or(fallback).to_owned();
            *counts.entry(key).or_default() += group.get("count").and_then(as_u64).unwrap_or(0);
        }
        Ok(counts)
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = "\\.^$|?*+()[]{}".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_matched_literally() {
        assert_eq!(regex_escape("logged in"), "logged in");
        assert_eq!(regex_escape("a.b*(c)"), "a\\.b\\*\\(c\\)");
    }
}
