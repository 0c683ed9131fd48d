//! Connecting to RabbitMQ and declaring the deployment's queues, with the
//! same arguments from every process.

use std::{collections::BTreeSet, time::Duration};

use finapp_shared::config::{QueueType, broker_uris};
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::{ExposeSecret, SecretString};

pub use finapp_shared::events::queue_names;

/// How long a connect (to each address of `RABBITMQ_URI`), or a batch's
/// publishes and confirms, may take before it counts as failed.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// The AMQP frame size asked for when `RABBITMQ_URI` names none. lapin keeps
/// two I/O buffers of 32 frames each. With no `frame_max` in the URI it starts
/// them at the protocol's minimum and, after negotiating RabbitMQ's default
/// (128 KiB), grows each to 4 MiB, touching every page: 8 MB of RSS. Stated up
/// front, the buffers are only touched as frames arrive. Events are well under
/// 8 KiB, and a larger message is only split over more frames.
pub const DEFAULT_FRAME_MAX: u32 = 8 * 1024;

/// Opens a broker connection named `name` (shown in the management UI),
/// with [`DEFAULT_FRAME_MAX`] unless the URI sets `frame_max` itself.
///
/// `uri` is `RABBITMQ_URI`: one AMQP URI, or a cluster's nodes as several
/// separated by commas ([`broker_uris`]). They are tried in order, each for
/// at most [`BROKER_TIMEOUT`] (a node that is down refuses at once; one
/// behind a partition costs the whole timeout), and the first that accepts
/// wins, so a process whose node died reaches the next on its next
/// reconnect. lapin connects to one address only, and its own recovery
/// returns to the same one. The error is the last address's.
pub async fn connect_broker(uri: &SecretString, name: &str) -> Result<Connection, lapin::Error> {
    let addresses = broker_uris(uri.expose_secret());
    let count = addresses.len();
    let mut failure = None;
    for (index, address) in addresses.into_iter().enumerate() {
        let attempt = tokio::time::timeout(BROKER_TIMEOUT, connect_one(address, name)).await;
        let err = match attempt {
            Ok(Ok(connection)) => {
                if index > 0 {
                    tracing::info!(
                        address = index + 1,
                        of = count,
                        "connected to a later broker address; the earlier ones failed"
                    );
                }
                return Ok(connection);
            }
            Ok(Err(err)) => err,
            Err(_) => lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("broker did not answer within {BROKER_TIMEOUT:?}"),
            )),
        };
        if index + 1 < count {
            // The address itself is not logged: it may hold credentials.
            tracing::warn!(
                address = index + 1,
                of = count,
                error = %err,
                "broker address failed; trying the next"
            );
        }
        failure = Some(err);
    }
    Err(failure.expect("broker_uris yields at least one address"))
}

/// Connects to one AMQP URI.
async fn connect_one(uri: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match uri.parse::<lapin::uri::AMQPUri>() {
        Ok(mut parsed) => {
            parsed.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(parsed, properties).await
        }
        // lapin reports the unreadable URI in its own words.
        Err(_) => Connection::connect(uri, properties).await,
    }
}

/// Declares every event queue and the dead-letter queue under `prefix`, as
/// durable `queue_type` queues. Publishers and the consumer both call this, so
/// the arguments stay identical.
///
/// A queue that already exists with other arguments (the original services
/// declared theirs non-durable, and a queue keeps its type) is adopted as it
/// is, with one warning per queue and process saying what differs;
/// `finapp-admin migrate-queues` moves it to this definition. The declarations
/// run on a channel of their own, because the broker closes a channel that
/// declares a queue inequivalently.
pub async fn declare_queues(
    connection: &Connection,
    prefix: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let mut channel = connection.create_channel().await?;
    for name in queue_names(prefix) {
        match declare_durable(&channel, &name, queue_type).await {
            Ok(()) => {}
            Err(err) if is_precondition_failed(&err) => {
                channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                warn_adopted_once(&name, &err);
            }
            Err(err) => return Err(err),
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Declares `name` with the bundle's definition: durable, and for quorum
/// queues an `x-queue-type`. Classic queues get no argument at all, exactly as
/// earlier versions declared them, so their queues still match.
pub async fn declare_durable(
    channel: &Channel,
    name: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(queue_type.as_str())),
        );
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

/// Declares `name` with the bundle's definition on a channel of its own:
/// `Ok(None)` when the queue matches it (or did not exist and now does),
/// `Ok(Some(err))` when it exists with other arguments, `err` saying which.
pub async fn probe_queue(
    connection: &Connection,
    name: &str,
    queue_type: QueueType,
) -> Result<Option<lapin::Error>, lapin::Error> {
    let channel = connection.create_channel().await?;
    match declare_durable(&channel, name, queue_type).await {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(None)
        }
        Err(err) if is_precondition_failed(&err) => Ok(Some(err)),
        Err(err) => Err(err),
    }
}

/// Whether the broker refused a declaration because the queue exists with
/// other arguments (AMQP 406 PRECONDITION_FAILED).
pub fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

fn warn_adopted_once(queue: &str, err: &lapin::Error) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut warned| warned.insert(queue.to_owned()))
        .unwrap_or(true);
    if first {
        let difference = match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
            _ => err.to_string(),
        };
        tracing::warn!(
            queue,
            difference,
            "queue exists with other arguments and is used as it is; if it is not durable, \
             its messages die with the broker: run finapp-admin migrate-queues once the old \
             publishers are stopped"
        );
    }
}
