//! The event contract: what an event is, which queue each kind travels on,
//! and the queue names of a deployment. Pure data: nothing here touches the
//! broker or MongoDB.
//!
//! A request never publishes: it records its event in the outbox
//! (`store::outbox`), and the relay of the `finapp-broker` crate, run by
//! notify-consumer, publishes from there. Each message carries an event token
//! in its `Authorization` header (see `auth::TokenKeys::issue_event`), as the
//! original carried the user's token.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The queue that receives messages the consumer refuses, under the deployment's prefix.
pub const DEAD_LETTER_QUEUE: &str = "finapp.dead_letter";

/// The kinds of event, each with its own queue (names kept from the original).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    UserRegistered,
    UserActivity,
    ApplicationSubmitted,
    FinancingOptionSelected,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::UserRegistered,
        EventType::UserActivity,
        EventType::ApplicationSubmitted,
        EventType::FinancingOptionSelected,
    ];

    /// The queue name without any deployment prefix.
    pub fn queue(self) -> &'static str {
        match self {
            EventType::UserRegistered => "user_registered",
            EventType::UserActivity => "user_activity",
            EventType::ApplicationSubmitted => "application_submitted",
            EventType::FinancingOptionSelected => "financing_option_selected",
        }
    }

    pub fn from_queue(queue: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.queue() == queue)
    }
}

/// The JSON body of every event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; the consumer records each id once.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Human-readable, as the original's plain-text bodies were.
    pub message: String,
}

impl Event {
    pub fn new(kind: EventType, username: &str, message: impl Into<String>) -> Self {
        Self::with_id(Uuid::now_v7(), kind, username, message)
    }

    /// An event with an id chosen beforehand: a request retried under its
    /// `Idempotency-Key` records its event under the first attempt's id.
    pub fn with_id(id: Uuid, kind: EventType, username: &str, message: impl Into<String>) -> Self {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            id,
            kind,
            username: username.to_owned(),
            timestamp_ms,
            message: message.into(),
        }
    }
}

/// Every queue of a deployment under `prefix`: the event queues, then the dead-letter queue.
pub fn queue_names(prefix: &str) -> impl Iterator<Item = String> + '_ {
    EventType::ALL
        .iter()
        .map(|kind| kind.queue())
        .chain([DEAD_LETTER_QUEUE])
        .map(move |name| format!("{prefix}{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_maps_to_the_original_queue_and_back() {
        let names: Vec<_> = EventType::ALL.iter().map(|kind| kind.queue()).collect();
        assert_eq!(
            names,
            [
                "user_registered",
                "user_activity",
                "application_submitted",
                "financing_option_selected"
            ]
        );
        for kind in EventType::ALL {
            assert_eq!(EventType::from_queue(kind.queue()), Some(kind));
        }
        assert_eq!(EventType::from_queue("nope"), None);
    }

    #[test]
    fn the_body_names_its_type_in_snake_case() {
        let event = Event::new(EventType::UserActivity, "ann", "logged in");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "user_activity");
        assert_eq!(json["username"], "ann");
        assert_eq!(json["id"], event.id.to_string());
    }
}
