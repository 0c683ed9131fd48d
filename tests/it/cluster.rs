//! A replicated broker: the bundle against a three-node RabbitMQ cluster of
//! the test's own, with quorum queues and `RABBITMQ_URI` naming every node.
//! Killing the node that leads the queues mid-stream loses no event and
//! counts none twice.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use finapp_shared::{
    Deps,
    events::{DEAD_LETTER_QUEUE, Event, EventType},
    store::{OutboxRecord, collections},
};
use finapp_tests::{PrivateCluster, Process, Signal, TestEnv, function_binary, wait_for};
use tokio::process::Command;

const EVENTS: usize = 10_000;
/// Events recorded in the outbox per write, one write every [`PACE`]. Half
/// the events are written before the kill, half from the moment of the kill
/// on, so the relay publishes while the cluster elects new leaders.
const CHUNK: usize = 100;
const PACE: Duration = Duration::from_millis(100);
/// Events counted before the leader is killed.
const KILL_AFTER: u64 = 2_000;
const USERS: usize = 8;
/// Events counted after the kill, before the killed node is restarted.
const WHILE_DOWN: u64 = 1_000;

/// Event `i`: the four types in turn, spread over [`USERS`] users; every
/// `user_activity` event is a login by the original's rule.
fn event(i: usize) -> Event {
    let kind = EventType::ALL[i % EventType::ALL.len()];
    let user = format!("cluster_user_{}", i % USERS);
    let message = match kind {
        EventType::UserActivity => format!("User {user} logged in ({i})"),
        _ => format!("event {i}"),
    };
    Event::new(kind, &user, message)
}

/// Writes `events` to the outbox as requests would, [`CHUNK`] at a time,
/// one write every [`PACE`]: the first half at once, the second once `go`
/// fires. `written` counts what is stored so far.
async fn stream_to_outbox(
    deps: Arc<Deps>,
    events: Vec<Event>,
    written: Arc<AtomicUsize>,
    go: tokio::sync::oneshot::Receiver<()>,
) {
    let outbox = deps
        .store
        .database()
        .collection::<OutboxRecord>(collections::OUTBOX);
    let (first, second) = events.split_at(events.len() / 2);
    write_paced(&outbox, first, &written).await;
    let _ = go.await;
    write_paced(&outbox, second, &written).await;
}

async fn write_paced(
    outbox: &mongodb::Collection<OutboxRecord>,
    events: &[Event],
    written: &AtomicUsize,
) {
    let mut pace = tokio::time::interval(PACE);
    for chunk in events.chunks(CHUNK) {
        pace.tick().await;
        outbox
            .insert_many(chunk.iter().map(OutboxRecord::new))
            .await
            .expect("the outbox write (FerretDB is not under test here)");
        written.fetch_add(chunk.len(), Ordering::SeqCst);
    }
}

#[tokio::test]
async fn killing_the_quorum_queues_leader_mid_stream_loses_no_event_and_counts_none_twice() {
    let mut cluster = PrivateCluster::start(3).await;
    let env = TestEnv::new()
        .with_quorum_queues()
        .with_broker(&cluster.uri());
    let deps = env.deps().await;
    let events: Vec<Event> = (0..EVENTS).map(event).collect();
    let ids: HashSet<String> = events.iter().map(|event| event.id.to_string()).collect();

    // notify-consumer, the relay inside it, pointed at every node.
    let mut consumer = {
        let mut command = Command::new(function_binary("notify-consumer"));
        command.env_clear().envs(env.vars());
        Process::spawn(command)
    };
    consumer
        .wait_for_line("\"consuming\"", Duration::from_secs(60))
        .await;

    // Every queue of the deployment is a quorum queue with a member on each node.
    let queues: Vec<String> = EventType::ALL.iter().map(|kind| env.queue(*kind)).collect();
    for queue in &queues {
        let info = cluster
            .queue(queue)
            .await
            .unwrap_or_else(|| panic!("{queue} is not listed"));
        assert_eq!(info["type"], "quorum", "{info}");
        assert_eq!(info["members"].as_array().map(Vec::len), Some(3), "{info}");
    }
    let activity = env.queue(EventType::UserActivity);
    let leader = wait_for("a leader of the queue", Duration::from_secs(30), || {
        cluster.leader(&activity)
    })
    .await;
    let mut led = Vec::new();
    for queue in &queues {
        if cluster.leader(queue).await.as_deref() == Some(leader.as_str()) {
            led.push(queue.clone());
        }
    }

    let started = std::time::Instant::now();
    let written = Arc::new(AtomicUsize::new(0));
    let (go, wait_go) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(stream_to_outbox(
        deps.clone(),
        events.clone(),
        written.clone(),
        wait_go,
    ));
    wait_for(
        "the first events counted",
        Duration::from_secs(120),
        || async { (env.count("user_analytics").await >= KILL_AFTER).then_some(()) },
    )
    .await;

    // kill -9 of the leader, mid-stream: the rest of the events are written
    // from the moment the node is gone.
    let counted_before = env.count("user_analytics").await;
    cluster.kill(&leader).await;
    let _ = go.send(());
    let killed_at = started.elapsed();
    assert!(counted_before < EVENTS as u64);
    for queue in &led {
        let successor = cluster
            .wait_leader_other_than(queue, &leader, Duration::from_secs(60))
            .await;
        assert_ne!(successor, leader);
    }
    // The stream goes on through the surviving majority: the relay and the
    // consumer reach another node of RABBITMQ_URI while this one is down.
    let counted_while_down = wait_for(
        "events counted while the killed node is down",
        Duration::from_secs(90),
        || async {
            let counted = env.count("user_analytics").await;
            (counted >= counted_before + WHILE_DOWN).then_some(counted)
        },
    )
    .await;
    cluster.restart(&leader).await;
    let restarted_at = started.elapsed();

    tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .expect("the stream ends")
        .unwrap();
    wait_for(
        "every event counted and the outbox empty",
        Duration::from_secs(240),
        || async {
            (env.count("user_analytics").await >= EVENTS as u64 && env.count("outbox").await == 0)
                .then_some(())
        },
    )
    .await;
    // Copies published twice (the relay's batch in doubt when its node died)
    // or delivered twice (acks lost with the node) are consumed too.
    wait_for("every queue drained", Duration::from_secs(60), || async {
        for queue in &queues {
            if env.queue_depth(queue).await > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    let drained_at = started.elapsed();
    consumer.signal(Signal::SIGTERM);
    consumer.wait_exit(Duration::from_secs(20)).await;

    // From the database: each event once, counted once, nothing left behind.
    assert_eq!(env.count("outbox").await, 0);
    assert_eq!(
        env.count("user_analytics").await,
        EVENTS as u64,
        "an event recorded twice"
    );
    let stored: HashSet<String> = env
        .distinct_strings("user_analytics", "event_id")
        .await
        .into_iter()
        .collect();
    assert_eq!(stored.len(), EVENTS);
    assert!(stored == ids, "the stored events are not the events sent");
    let summary = deps.store.analytics_summary().await.unwrap();
    assert_eq!(summary.total_events, EVENTS as u64, "{summary:?}");
    let per_type: BTreeMap<String, u64> = EventType::ALL
        .iter()
        .map(|kind| (kind.queue().to_owned(), (EVENTS / 4) as u64))
        .collect();
    assert_eq!(summary.events_per_type, per_type);
    assert_eq!(summary.total_logins, (EVENTS / 4) as u64);
    let mut logins_per_user: BTreeMap<String, u64> = BTreeMap::new();
    for event in events.iter().filter(|e| e.kind == EventType::UserActivity) {
        *logins_per_user.entry(event.username.clone()).or_default() += 1;
    }
    assert_eq!(summary.logins_per_user, logins_per_user);
    assert_eq!(
        env.queue_depth(&format!("{}{DEAD_LETTER_QUEUE}", env.queue_prefix))
            .await,
        0,
        "an event was dead-lettered"
    );
    let reconnects = consumer
        .output()
        .iter()
        .filter(|line| line.contains("\"consuming\""))
        .count()
        - 1;
    eprintln!(
        "killed {leader}, leader of {} queues, at {killed_at:?} with {counted_before} events \
         counted; {counted_while_down} counted while it was down; restarted at \
         {restarted_at:?}; all counted and drained at {drained_at:?}; the consumer \
         reconnected {reconnects} times",
        led.len()
    );
}
