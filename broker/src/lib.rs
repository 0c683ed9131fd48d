//! The broker side of FinApp: connecting to RabbitMQ and declaring the
//! queues ([`topology`]), publishing with confirms ([`publisher`]), and the
//! outbox relay ([`relay`]), the one part of the bundle that publishes the
//! functions' events.
//!
//! A crate of its own so that only the processes that talk to the broker
//! (notify-consumer, finapp-admin) link lapin: the HTTP functions record
//! their events in the outbox through `finapp_shared::store` and never open
//! a broker connection.

pub mod publisher;
pub mod relay;
pub mod topology;

pub use publisher::{Outgoing, PublishError, Publisher};
pub use relay::{Relay, RelayError};
