//! Nothing lost, nothing twice: the bundle's real processes on a database
//! and a broker of this test's own, under a web client's mixed workload with
//! retries, while one component after another is killed (SIGKILL) and
//! restarted: a function, notify-consumer, FerretDB, PostgreSQL, the
//! RabbitMQ node, and FerretDB paused. Then, from the database: every
//! acknowledged write is there exactly once, the outbox drains within 30 s
//! of the last fault, analytics count what was acknowledged, and no answer
//! was a 500. The schedule is fixed and the client's choices come from a
//! fixed seed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use finapp_shared::{
    events::{DEAD_LETTER_QUEUE, EventType},
    store::collections,
};
use finapp_tests::{
    FunctionProcess, PrivateBroker, Process, Signal, TestEnv, database::PrivateDatabase,
    function_binary, wait_for,
};
use futures_util::TryStreamExt as _;
use mongodb::bson::{Document, doc};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use tokio::process::Command;

const SEED: u64 = 31;
const CLIENTS: usize = 8;
/// How long the clients start new users for.
const LOAD: Duration = Duration::from_secs(100);
/// The first fault, and the time between faults.
const FIRST_FAULT: Duration = Duration::from_secs(6);
const FAULT_EVERY: Duration = Duration::from_secs(8);
/// How long a killed component stays down.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// A client's patience with one request before it counts it as lost.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one action may go on being retried before the test gives up.
const ACTION_DEADLINE: Duration = Duration::from_secs(90);
const PASSWORD: &str = "secure_password";
/// A client's pause between users.
const THINK: Duration = Duration::from_millis(200);
/// The functions the clients call.
const FUNCTIONS: [&str; 6] = [
    "signup",
    "login",
    "apply",
    "status",
    "log-financing-options-visit",
    "select-financing-option",
];

#[derive(Clone, Copy, Debug)]
enum Fault {
    Function(&'static str),
    Consumer,
    FerretDb,
    Postgres,
    Broker,
    PauseFerretDb,
}

/// One of each, then again with other functions: 11 faults in about 100 s.
const SCHEDULE: [Fault; 11] = [
    // First: the node takes half a minute to come back, and the outbox
    // fills meanwhile.
    Fault::Broker,
    Fault::Function("apply"),
    Fault::Postgres,
    Fault::Consumer,
    Fault::FerretDb,
    Fault::PauseFerretDb,
    Fault::Function("signup"),
    Fault::Postgres,
    Fault::Function("select-financing-option"),
    Fault::FerretDb,
    Fault::Function("login"),
];

/// A small seeded generator (xorshift): the clients' choices, repeatable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What one user's client was told, and how many of its attempts ended
/// without an answer that says whether the write happened.
#[derive(Debug, Default)]
struct UserTally {
    signed_up: bool,
    logins: u64,
    logins_unknown: u64,
    visits: u64,
    visits_unknown: u64,
    /// The ids of the applications answered 201, one per Idempotency-Key.
    applications: Vec<String>,
    selections: u64,
    last_option: Option<String>,
}

#[derive(Default)]
struct Tally {
    users: BTreeMap<String, UserTally>,
    statuses: BTreeMap<u16, u64>,
    lost: u64,
}

/// Where each function listens now (a restarted one listens elsewhere).
type Urls = Arc<RwLock<HashMap<&'static str, String>>>;

struct Client {
    http: reqwest::Client,
    urls: Urls,
    tally: Arc<Mutex<Tally>>,
    rng: Rng,
}

/// An answer that settles an action, and how many attempts before it left
/// the outcome unknown (a lost request, a 5xx, a key still in progress).
struct Settled {
    status: u16,
    body: Value,
    unknown: u64,
}

impl Client {
    /// Sends the request `build` makes until an answer settles it: anything
    /// but a 5xx, a lost request or a 409 for a key in progress; those are
    /// retried, with the same body and key, after a short pause.
    async fn settle(
        &mut self,
        function: &'static str,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Settled {
        let started = Instant::now();
        let mut unknown = 0;
        loop {
            assert!(
                started.elapsed() < ACTION_DEADLINE,
                "{function}: no settling answer in {ACTION_DEADLINE:?}"
            );
            let base = self.urls.read().unwrap()[function].clone();
            match build(&self.http, &base)
                .timeout(CLIENT_TIMEOUT)
                .send()
                .await
            {
                Ok(response) => {
                    let status = response.status().as_u16();
                    *self
                        .tally
                        .lock()
                        .unwrap()
                        .statuses
                        .entry(status)
                        .or_default() += 1;
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let in_progress =
                        status == 409 && body["error"] == "idempotency_key_in_progress";
                    if status < 500 && !in_progress {
                        return Settled {
                            status,
                            body,
                            unknown,
                        };
                    }
                }
                Err(_) => self.tally.lock().unwrap().lost += 1,
            }
            unknown += 1;
            tokio::time::sleep(Duration::from_millis(100 + self.rng.below(200))).await;
        }
    }

    /// One user's session, as the web client runs it.
    async fn session(&mut self, user: String, options: &[String]) -> UserTally {
        let mut tally = UserTally::default();
        let signup = json!({"username": user, "password": PASSWORD});
        let answer = self
            .settle("signup", |http, base| {
                http.post(format!("{base}/signup")).json(&signup)
            })
            .await;
        match answer.status {
            201 => tally.signed_up = true,
            // Only an earlier attempt of ours can have taken the name.
            409 if answer.unknown > 0 => tally.signed_up = true,
            status => panic!("signup {user}: {status} {}", answer.body),
        }
        let login = json!({"username": user, "password": PASSWORD});
        let answer = self
            .settle("login", |http, base| {
                http.post(format!("{base}/login")).json(&login)
            })
            .await;
        assert_eq!(answer.status, 200, "login {user}: {}", answer.body);
        tally.logins += 1;
        tally.logins_unknown += answer.unknown;
        let token = answer.body["access_token"].as_str().unwrap().to_owned();
        let authed = |http: &reqwest::Client, method: Method, url: String| {
            http.request(method, url).bearer_auth(&token)
        };

        let answer = self
            .settle("log-financing-options-visit", |http, base| {
                authed(
                    http,
                    Method::POST,
                    format!("{base}/log-financing-options-visit"),
                )
            })
            .await;
        assert_eq!(answer.status, 200, "visit {user}: {}", answer.body);
        tally.visits += 1;
        tally.visits_unknown += answer.unknown;

        for n in 0..2 {
            let key = uuid::Uuid::new_v4().to_string();
            let body = json!({
                "loan_types": ["personal"],
                "amount": 1000 + self.rng.below(9000),
                "purpose": format!("intent {n}"),
            });
            let answer = self
                .settle("apply", |http, base| {
                    authed(http, Method::POST, format!("{base}/apply"))
                        .header("Idempotency-Key", &key)
                        .json(&body)
                })
                .await;
            assert_eq!(answer.status, 201, "apply {user}: {}", answer.body);
            tally
                .applications
                .push(answer.body["application_id"].as_str().unwrap().to_owned());
        }

        let option = options[self.rng.below(options.len() as u64) as usize].clone();
        let key = uuid::Uuid::new_v4().to_string();
        let answer = self
            .settle("select-financing-option", |http, base| {
                authed(
                    http,
                    Method::POST,
                    format!("{base}/select-financing-option"),
                )
                .header("Idempotency-Key", &key)
                .json(&json!({"option_id": option}))
            })
            .await;
        assert_eq!(answer.status, 200, "select {user}: {}", answer.body);
        tally.selections += 1;
        tally.last_option = Some(option);

        let answer = self
            .settle("status", |http, base| {
                authed(http, Method::GET, format!("{base}/status"))
            })
            .await;
        assert_eq!(answer.status, 200, "status {user}: {}", answer.body);
        tally
    }
}

/// The bundle's processes on the test's own database and broker.
struct Stack {
    db: PrivateDatabase,
    broker: PrivateBroker,
    env: TestEnv,
    functions: HashMap<&'static str, FunctionProcess>,
    urls: Urls,
    consumer: Option<Process>,
}

impl Stack {
    async fn start() -> Self {
        let db = PrivateDatabase::start().await;
        let broker = PrivateBroker::start().await;
        let env = TestEnv::new()
            .with_mongodb(&db.uri)
            .with_broker(&broker.uri)
            .with_var("HTTP_REQUEST_TIMEOUT_MS", 2000);
        let mut stack = Self {
            db,
            broker,
            env,
            functions: HashMap::new(),
            urls: Urls::default(),
            consumer: None,
        };
        for name in FUNCTIONS {
            stack.start_function(name).await;
        }
        stack.start_consumer();
        stack
    }

    async fn start_function(&mut self, name: &'static str) {
        let function = FunctionProcess::start(name, &self.env).await;
        self.urls
            .write()
            .unwrap()
            .insert(name, function.base_url.clone());
        self.functions.insert(name, function);
    }

    fn start_consumer(&mut self) {
        let mut command = Command::new(function_binary("notify-consumer"));
        command.env_clear().envs(self.env.vars());
        self.consumer = Some(Process::spawn(command));
    }

    /// The consumer's last lines of output.
    fn consumer_tail(&self) -> String {
        let output = self
            .consumer
            .as_ref()
            .map(Process::output)
            .unwrap_or_default();
        output[output.len().saturating_sub(30)..].join("\n")
    }

    /// Kills `fault`'s component, waits [`DOWN_FOR`], and starts it again.
    async fn inflict(&mut self, fault: Fault) {
        match fault {
            Fault::Function(name) => {
                let mut function = self.functions.remove(name).unwrap();
                function.process.signal(Signal::SIGKILL);
                function.process.wait_exit(Duration::from_secs(10)).await;
                tokio::time::sleep(DOWN_FOR).await;
                self.start_function(name).await;
            }
            Fault::Consumer => {
                let mut consumer = self.consumer.take().unwrap();
                consumer.signal(Signal::SIGKILL);
                consumer.wait_exit(Duration::from_secs(10)).await;
                tokio::time::sleep(DOWN_FOR).await;
                self.start_consumer();
            }
            Fault::FerretDb => {
                self.db.kill_ferretdb().await;
                tokio::time::sleep(DOWN_FOR).await;
                self.db.start_ferretdb().await;
            }
            Fault::Postgres => {
                self.db.kill_postgres().await;
                tokio::time::sleep(DOWN_FOR).await;
                self.db.start_postgres().await;
            }
            Fault::Broker => {
                self.broker.kill().await;
                tokio::time::sleep(DOWN_FOR).await;
                self.broker.resume().await;
            }
            Fault::PauseFerretDb => self.db.pause_ferretdb(Duration::from_secs(3)).await,
        }
    }
}

async fn count(env: &TestEnv, collection: &str, filter: Document) -> u64 {
    env.db()
        .await
        .collection::<Document>(collection)
        .count_documents(filter)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_kills_of_every_component_every_acknowledged_write_is_stored_once_and_counted_once() {
    let mut stack = Stack::start().await;
    let env = stack.env.sharing_with_broker(&stack.broker.uri);
    let deps = env.deps().await;
    finapp_admin::seed_financing_options(&deps.store)
        .await
        .unwrap();
    let options: Vec<String> = deps
        .store
        .financing_options()
        .await
        .unwrap()
        .iter()
        .map(|option| option["_id"].as_str().unwrap().to_owned())
        .collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = Client {
                http: reqwest::Client::new(),
                urls: stack.urls.clone(),
                tally: tally.clone(),
                rng: Rng::new(SEED + c as u64),
            };
            let options = options.clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < LOAD {
                    // A person's pace, not a load generator's.
                    tokio::time::sleep(THINK).await;
                    let user = format!("fault{c}_{n}");
                    let seen = client.session(user.clone(), &options).await;
                    tally.lock().unwrap().users.insert(user, seen);
                    n += 1;
                }
            })
        })
        .collect();
    let mut last_fault = started;
    for (k, fault) in SCHEDULE.into_iter().enumerate() {
        let at = FIRST_FAULT + FAULT_EVERY * k as u32;
        tokio::time::sleep_until((started + at).into()).await;
        eprintln!("fault {k} at {:?}: {fault:?}", started.elapsed());
        stack.inflict(fault).await;
        last_fault = Instant::now();
    }
    for client in clients {
        client.await.expect("a client panicked");
    }
    eprintln!("load over at {:?}", started.elapsed());

    // The outbox drains within 30 s of the last fault.
    loop {
        let left = count(&env, collections::OUTBOX, doc! {}).await;
        if left == 0 {
            break;
        }
        assert!(
            last_fault.elapsed() < Duration::from_secs(30),
            "{left} outbox records left 30 s after the last fault; notify-consumer said:\n{}",
            stack.consumer_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = last_fault.elapsed();

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let acknowledged_events: u64 = tally
        .users
        .values()
        .map(|user| {
            u64::from(user.signed_up)
                + user.logins
                + user.visits
                + user.applications.len() as u64
                + user.selections
        })
        .sum();
    // Every event reaches analytics (the consumer may still be writing).
    wait_for(
        "analytics to hold every acknowledged event",
        Duration::from_secs(60),
        || async {
            (count(&env, collections::ANALYTICS, doc! {}).await >= acknowledged_events)
                .then_some(())
        },
    )
    .await;

    let requests: u64 = tally.statuses.values().sum();
    eprintln!(
        "{} users, {requests} answers {:?}, {} lost requests, {} faults, outbox drained {drained:?} after the last fault",
        tally.users.len(),
        tally.statuses,
        tally.lost,
        SCHEDULE.len()
    );
    assert_eq!(tally.statuses.get(&500), None, "answers of 500");
    assert!(
        tally.users.len() >= CLIENTS * 5,
        "too little load to mean anything"
    );

    let db = env.db().await;
    let applications = db.collection::<Document>(collections::APPLICATIONS);
    let summary = deps.store.analytics_summary().await.unwrap();
    for (user, seen) in &tally.users {
        assert!(seen.signed_up, "{user}");
        assert_eq!(
            count(&env, collections::USERS, doc! { "username": user }).await,
            1,
            "{user}: the acknowledged sign-up"
        );
        let stored: HashSet<String> = applications
            .find(doc! { "submitted_by": user })
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .iter()
            .map(|application| application.get_object_id("_id").unwrap().to_hex())
            .collect();
        let acknowledged: HashSet<String> = seen.applications.iter().cloned().collect();
        assert_eq!(
            stored, acknowledged,
            "{user}: exactly the acknowledged applications, each once"
        );
        assert_eq!(acknowledged.len(), seen.applications.len(), "{user}");
        let selection = db
            .collection::<Document>(collections::SELECTIONS)
            .find_one(doc! { "user": user })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{user}: the acknowledged selection"));
        let selected = selection
            .get_document("selected_option")
            .unwrap()
            .get_object_id("_id")
            .unwrap();
        assert_eq!(
            Some(selected.to_hex()),
            seen.last_option,
            "{user}: the selection"
        );

        let events = |kind: EventType| {
            count(
                &env,
                collections::ANALYTICS,
                doc! { "username": user, "type": kind.queue() },
            )
        };
        assert_eq!(events(EventType::UserRegistered).await, 1, "{user}");
        assert_eq!(
            events(EventType::ApplicationSubmitted).await,
            seen.applications.len() as u64,
            "{user}: one event per application"
        );
        assert_eq!(
            events(EventType::FinancingOptionSelected).await,
            seen.selections,
            "{user}: one event per selection"
        );
        // A login or a visit has no key: an attempt whose answer was lost
        // may have been recorded too, and counts, so the count lies between
        // what was acknowledged and what may have happened.
        let logins = summary.logins_per_user.get(user).copied().unwrap_or(0);
        assert!(
            (seen.logins..=seen.logins + seen.logins_unknown).contains(&logins),
            "{user}: {logins} logins counted, {} acknowledged, {} unknown",
            seen.logins,
            seen.logins_unknown
        );
        let visits = summary
            .financing_checks_per_user
            .get(user)
            .copied()
            .unwrap_or(0);
        assert!(
            (seen.visits..=seen.visits + seen.visits_unknown).contains(&visits),
            "{user}: {visits} visits counted, {} acknowledged, {} unknown",
            seen.visits,
            seen.visits_unknown
        );
    }
    assert_eq!(
        summary.total_events,
        count(&env, collections::ANALYTICS, doc! {}).await,
        "the counters agree with the stored events"
    );
    assert_eq!(
        env.queue_depth(&format!("{}{DEAD_LETTER_QUEUE}", env.queue_prefix))
            .await,
        0,
        "dead letters"
    );
}
