//! Test harness shared by the integration tests: a fresh database name and queue
//! prefix per test (so tests run in parallel against one FerretDB and one
//! RabbitMQ), functions served in-process or as real processes, and waiting on
//! conditions with deadlines instead of sleeping.

pub mod database;
pub mod openapi;
pub mod rabbit;
pub mod routes;

pub use rabbit::{PrivateBroker, PrivateCluster, RabbitNode};

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use finapp_shared::{
    Deps,
    auth::{EVENT_AUDIENCE, Role},
    config::Config,
    events::EventType,
    http::{self, Routes},
};
use lapin::{
    Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions},
};
use mongodb::{Database, bson::Document};
pub use nix::sys::signal::Signal;
use nix::{sys::signal::killpg, unistd::Pid};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The MongoDB server `scripts/services.sh` starts; `FINAPP_TEST_MONGODB_URI`
/// points the tests at another (a second FerretDB, a real MongoDB).
pub const MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
pub const RABBITMQ_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The MongoDB URI the tests use: `FINAPP_TEST_MONGODB_URI`, else [`MONGODB_URI`].
pub fn mongodb_uri() -> String {
    std::env::var("FINAPP_TEST_MONGODB_URI")
        .ok()
        .filter(|uri| !uri.is_empty())
        .unwrap_or_else(|| MONGODB_URI.to_owned())
}

/// Polls `check` until it yields `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's isolated slice of the shared services.
pub struct TestEnv {
    pub database: String,
    pub queue_prefix: String,
    pub jwt_secret: String,
    pub bcrypt_cost: u32,
    pub rabbitmq_uri: String,
    /// `RABBITMQ_QUEUE_TYPE`, unset (the default type) unless a test asks.
    pub queue_type: Option<&'static str>,
    /// `MONGODB_URI`: the shared FerretDB unless a test has its own.
    pub mongodb_uri: String,
    /// Any other variables a test sets (limits, throttling).
    pub extra: Vec<(&'static str, String)>,
}

impl TestEnv {
    pub fn new() -> Self {
        Self::with_bcrypt_cost(4)
    }

    pub fn with_bcrypt_cost(bcrypt_cost: u32) -> Self {
        // Tests sign tokens with jsonwebtoken directly, maybe before any TokenKeys exists.
        finapp_shared::hs256::install();
        // FINAPP_TEST_LOG=1 shows the functions' own logs while debugging a test.
        if std::env::var_os("FINAPP_TEST_LOG").is_some() {
            finapp_shared::telemetry::init("finapp-tests");
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            database: format!("test_{}", &id[..20]),
            queue_prefix: format!("test.{}.", &id[..20]),
            jwt_secret: format!("test-secret-{id}"),
            bcrypt_cost,
            rabbitmq_uri: RABBITMQ_URI.into(),
            queue_type: None,
            mongodb_uri: mongodb_uri(),
            extra: Vec::new(),
        }
    }

    /// The distinct values of `field` in `collection`, each a string.
    pub async fn distinct_strings(&self, collection: &str, field: &str) -> Vec<String> {
        self.db()
            .await
            .collection::<mongodb::bson::Document>(collection)
            .distinct(field, mongodb::bson::Document::new())
            .await
            .unwrap()
            .into_iter()
            .map(|value| value.as_str().expect("a string").to_owned())
            .collect()
    }

    /// The environment a function process of this test gets. No metrics
    /// endpoint unless the test sets `METRICS_PORT`: parallel processes
    /// would all ask for the default port. No `/analytics` cache unless the
    /// test sets `ANALYTICS_CACHE_MS`.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let unset = |name| !self.extra.iter().any(|(set, _)| *set == name);
        let metrics_port = unset("METRICS_PORT").then(|| ("METRICS_PORT", "off".to_owned()));
        // Tests read /analytics right after the writes they check.
        let analytics_cache =
            unset("ANALYTICS_CACHE_MS").then(|| ("ANALYTICS_CACHE_MS", "0".to_owned()));
        vec![
            ("MONGODB_URI", self.mongodb_uri.clone()),
            ("MONGODB_DATABASE", self.database.clone()),
            ("RABBITMQ_URI", self.rabbitmq_uri.clone()),
            ("RABBITMQ_QUEUE_PREFIX", self.queue_prefix.clone()),
            ("JWT_SECRET_KEY", self.jwt_secret.clone()),
            ("BCRYPT_COST", self.bcrypt_cost.to_string()),
        ]
        .into_iter()
        .chain(
            self.queue_type
                .map(|kind| ("RABBITMQ_QUEUE_TYPE", kind.to_owned())),
        )
        .chain(metrics_port)
        .chain(analytics_cache)
        .chain(self.extra.iter().cloned())
        .collect()
    }

    /// This test's environment with `name` set to `value` as well.
    pub fn with_var(mut self, name: &'static str, value: impl ToString) -> Self {
        self.extra.push((name, value.to_string()));
        self
    }

    /// This test's environment with its event queues declared as quorum
    /// queues, whatever the default.
    pub fn with_quorum_queues(mut self) -> Self {
        self.queue_type = Some("quorum");
        self
    }

    /// This test's environment with its event queues declared as classic
    /// queues (no arguments), as before quorum queues were the default.
    pub fn with_classic_queues(mut self) -> Self {
        self.queue_type = Some("classic");
        self
    }

    /// This test's environment with the database server at `uri` instead of the shared one.
    pub fn with_mongodb(mut self, uri: &str) -> Self {
        self.mongodb_uri = uri.to_owned();
        self
    }

    /// Another view of this test's slice (same database, queue prefix and
    /// key) whose processes use the broker at `uri`.
    pub fn sharing_with_broker(&self, uri: &str) -> Self {
        Self {
            database: self.database.clone(),
            queue_prefix: self.queue_prefix.clone(),
            jwt_secret: self.jwt_secret.clone(),
            bcrypt_cost: self.bcrypt_cost,
            rabbitmq_uri: uri.to_owned(),
            queue_type: self.queue_type,
            mongodb_uri: self.mongodb_uri.clone(),
            extra: self.extra.clone(),
        }
    }

    /// This test's environment with the broker at `uri` instead of the shared one.
    pub fn with_broker(mut self, uri: &str) -> Self {
        self.rabbitmq_uri = uri.to_owned();
        self
    }

    pub fn config(&self) -> Config {
        let vars = self.vars();
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("test configuration is valid")
    }

    pub async fn deps(&self) -> Arc<Deps> {
        Deps::connect(self.config())
            .await
            .expect("FerretDB is running (scripts/services.sh)")
    }

    pub async fn db(&self) -> Database {
        mongodb::Client::with_uri_str(&self.mongodb_uri)
            .await
            .expect("valid URI")
            .database(&self.database)
    }

    pub async fn count(&self, collection: &str) -> u64 {
        self.db()
            .await
            .collection::<Document>(collection)
            .count_documents(Document::new())
            .await
            .unwrap()
    }

    /// Some document of `collection`, if it holds any.
    pub async fn any_document(&self, collection: &str) -> Option<Document> {
        self.db()
            .await
            .collection::<Document>(collection)
            .find_one(Document::new())
            .await
            .unwrap()
    }

    pub fn queue(&self, kind: EventType) -> String {
        format!("{}{}", self.queue_prefix, kind.queue())
    }

    /// A channel on this test's broker; the connection closes when dropped.
    async fn channel(&self) -> (Connection, lapin::Channel) {
        // connect_broker: RABBITMQ_URI may list a cluster's nodes.
        let connection = finapp_broker::topology::connect_broker(
            &self.rabbitmq_uri.clone().into(),
            "finapp-tests",
        )
        .await
        .expect("RabbitMQ is running (scripts/services.sh)");
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// How many messages wait in `queue`, ready for delivery (not counting
    /// those delivered and not yet acknowledged).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let (connection, channel) = self.channel().await;
        let declared = declare(
            &channel,
            queue,
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .await;
        let _ = connection.close(200, "done".into()).await;
        declared.message_count()
    }

    /// Declares `queue` as the functions do (durable, of this test's queue
    /// type): a queue that does not exist yet would close the channel on
    /// `basic_get`, and a declaration of another type would be refused.
    async fn declare_durable(&self, channel: &lapin::Channel, queue: &str) {
        finapp_broker::topology::declare_durable(channel, queue, self.config().queue_type)
            .await
            .unwrap();
    }

    /// Takes the next message from this test's queue for `kind`, waiting up to 10 s.
    pub async fn next_message(&self, kind: EventType) -> BasicGetMessage {
        self.next_message_on(&self.queue(kind)).await
    }

    /// Takes the next message from the queue named `queue`, waiting up to 10 s.
    pub async fn next_message_on(&self, queue: &str) -> BasicGetMessage {
        let (_connection, channel) = self.channel().await;
        self.declare_durable(&channel, queue).await;
        take_next(&channel, queue).await
    }

    /// Takes `count` messages from this test's queue for `kind` over one
    /// channel, waiting up to 10 s for each.
    pub async fn take_messages(&self, kind: EventType, count: usize) -> Vec<BasicGetMessage> {
        let queue = self.queue(kind);
        let (_connection, channel) = self.channel().await;
        self.declare_durable(&channel, &queue).await;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(take_next(&channel, &queue).await);
        }
        messages
    }
}

/// Declares `queue` with `options` (no arguments).
async fn declare(
    channel: &lapin::Channel,
    queue: &str,
    options: lapin::options::QueueDeclareOptions,
) -> lapin::Queue {
    channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .unwrap()
}

/// Takes and acknowledges the next message of `queue`, waiting up to 10 s.
async fn take_next(channel: &lapin::Channel, queue: &str) -> BasicGetMessage {
    let message = wait_for(
        &format!("a message on {queue}"),
        Duration::from_secs(10),
        || async {
            channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    message
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    message
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Every HTTP function's routes, merged, for tests that exercise several at once.
pub fn all_functions(deps: Arc<Deps>) -> Routes {
    let builders: [fn(Arc<Deps>) -> Routes; 12] = [
        signup::router,
        login::router,
        apply::router,
        status::router,
        dashboard_info::router,
        financing_options::router,
        select_financing_option::router,
        log_financing_options_visit::router,
        update_status::router,
        admin_applications::router,
        admin_update_status::router,
        analytics::router,
    ];
    builders.into_iter().fold(Routes::new(), |router, build| {
        router.merge(build(deps.clone()))
    })
}

/// A function served in-process on a random port, the way `serve` does in plain HTTP mode.
pub struct TestApp {
    pub address: SocketAddr,
    pub deps: Arc<Deps>,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn(env: &TestEnv, build: fn(Arc<Deps>) -> Routes) -> Self {
        let deps = env.deps().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = deps.config.limits;
        let app = http::app(build(deps.clone()), &limits);
        tokio::spawn(async move {
            finapp_shared::server::run(listener, app, &limits, std::future::pending()).await;
        });
        Self {
            address,
            deps,
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        send(self.client.post(self.url(path)).json(body)).await
    }

    /// A request to `path` with `token` as its bearer token.
    pub fn authed(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// Stores `username` as a plain user (if not there yet) and returns a
    /// token for them: user routes refuse a token whose user does not exist.
    pub async fn token_for(&self, username: &str) -> String {
        user_token(&self.deps, username).await
    }

    /// Stores `username` as an admin and returns a token for them.
    pub async fn admin_token(&self, username: &str) -> String {
        let hash = self
            .deps
            .passwords
            .hash("admin_password".to_string().into())
            .await
            .unwrap();
        self.deps.store.upsert_admin(username, &hash).await.unwrap();
        self.deps
            .tokens
            .issue(username, Role::Admin)
            .expose_secret()
            .to_owned()
    }

    /// Submits an application as the holder of `token`; returns its id.
    pub async fn apply(&self, token: &str, amount: f64) -> String {
        let body = serde_json::json!({"loan_types": ["personal"], "amount": amount, "purpose": "Car purchase"});
        let (status, reply) = send(
            self.authed(reqwest::Method::POST, "/apply", token)
                .json(&body),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
        reply["application_id"].as_str().unwrap().to_owned()
    }
}

/// Signs `username` up with `password` through the signup function, as a client would.
pub async fn sign_up(env: &TestEnv, username: &str, password: &str) {
    let signup = TestApp::spawn(env, signup::router).await;
    let (status, body) = signup
        .post_json(
            "/signup",
            &serde_json::json!({"username": username, "password": password}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Stores `username` as a plain user (if not there yet), with a password no
/// login matches, and returns a token for them.
pub async fn user_token(deps: &Deps, username: &str) -> String {
    let user = finapp_shared::store::UserDoc::new(username, "not-a-bcrypt-hash", Role::User);
    match deps.store.insert_user(&user).await {
        Ok(()) | Err(finapp_shared::store::InsertUserError::Taken) => {}
        Err(err) => panic!("cannot store user {username}: {err}"),
    }
    deps.tokens
        .issue(username, Role::User)
        .expose_secret()
        .to_owned()
}

/// Sends a request and returns its status and JSON body (`Null` if the body is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the function answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The path of a function binary built by `cargo build --workspace --bins`,
/// next to this test executable's own profile directory.
pub fn function_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A `cargo lambda watch` serving every function with this test's environment.
pub struct Watch {
    _process: Process,
    pub base_url: String,
    pub port: u16,
}

impl Watch {
    pub async fn start(env: &TestEnv) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("cargo");
        command
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(workspace_root())
            .envs(env.vars());
        let process = Process::spawn(command);
        let base_url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for(
            "cargo lambda watch to listen",
            Duration::from_secs(60),
            || async { client.get(&base_url).send().await.ok().map(|_| ()) },
        )
        .await;
        Self {
            _process: process,
            base_url,
            port,
        }
    }
}

/// A child process in its own process group, killed with its children on drop,
/// whose stdout and stderr lines are collected.
pub struct Process {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Self {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("process starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            collect_lines(stdout, output.clone()),
            collect_lines(stderr, output.clone()),
        ];
        Self {
            child,
            output,
            readers,
        }
    }

    /// The child's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The child's stdin, when it was spawned with `Stdio::piped()` for it.
    pub fn take_stdin(&mut self) -> tokio::process::ChildStdin {
        self.child.stdin.take().expect("stdin was piped")
    }

    /// Every line printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Whether some line printed so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.output
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(needle))
    }

    /// Waits for a printed line containing `needle` and returns it.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        wait_for(
            &format!("a line containing {needle:?}"),
            timeout,
            || async { self.output().into_iter().find(|line| line.contains(needle)) },
        )
        .await
    }

    /// Sends `signal` to the process's own group (the process and its children).
    pub fn signal(&self, signal: Signal) {
        // A group id of 0 or 1 would mean "our own group" or "everything".
        if let Some(pid) = self
            .child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|&pid| pid > 1)
        {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }

    /// Waits for the process to exit and its output to be read, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let readers = std::mem::take(&mut self.readers);
        let exited = async {
            let status = self.child.wait().await.unwrap();
            for reader in readers {
                let _ = reader.await;
            }
            status
        };
        tokio::time::timeout(timeout, exited)
            .await
            .unwrap_or_else(|_| panic!("process still running after {timeout:?}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn collect_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(line);
        }
    })
}

/// Runs `finapp-admin ARGS` with this test's environment and `stdin`; returns
/// whether it succeeded and everything it printed.
pub async fn admin_tool(env: &TestEnv, args: &[&str], stdin: &str) -> (bool, String) {
    let mut command = Command::new(function_binary("finapp-admin"));
    command.args(args).envs(env.vars()).stdin(Stdio::piped());
    let mut process = Process::spawn(command);
    let mut input = process.take_stdin();
    tokio::io::AsyncWriteExt::write_all(&mut input, stdin.as_bytes())
        .await
        .unwrap();
    drop(input);
    let status = process.wait_exit(Duration::from_secs(30)).await;
    (status.success(), process.output().join("\n"))
}

/// A function binary running in plain HTTP mode on a port of its choosing.
pub struct FunctionProcess {
    pub process: Process,
    pub base_url: String,
}

impl FunctionProcess {
    pub async fn start(name: &str, env: &TestEnv) -> Self {
        Self::start_with(name, env.vars()).await
    }

    /// Starts `name` with exactly `vars` (plus `PORT=0`) as its environment.
    pub async fn start_with<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        name: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut command = Command::new(function_binary(name));
        command
            .env_clear()
            .env("PORT", "0")
            .env("METRICS_PORT", "off")
            .envs(vars);
        Self::spawn(command).await
    }

    /// Runs `command`, which starts a function with `PORT=0`, and waits until it listens.
    pub async fn spawn(command: Command) -> Self {
        let process = Process::spawn(command);
        let line = process
            .wait_for_line("\"listening\"", Duration::from_secs(10))
            .await;
        let port = serde_json::from_str::<Value>(&line).unwrap()["port"]
            .as_u64()
            .unwrap();
        Self {
            process,
            base_url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// A FerretDB of one test's own, on its own port and data directory, so the
/// test can kill and restart "the database" without disturbing other tests.
pub struct PrivateFerret {
    pub uri: String,
    port: u16,
    dir: PathBuf,
    process: Option<Process>,
}

impl PrivateFerret {
    pub async fn start() -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let dir = std::env::temp_dir().join(format!("finapp-ferret-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut ferret = Self {
            uri: format!("mongodb://127.0.0.1:{port}"),
            port,
            dir,
            process: None,
        };
        ferret.resume().await;
        ferret
    }

    /// Starts it again on the same port and data.
    pub async fn resume(&mut self) {
        // scripts/services.sh builds it and says where; SQLite needs no server of its own.
        let binary = std::env::var_os("FINAPP_FERRETDB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".dev/bin/finapp-ferretdb"));
        let mut command = Command::new(binary);
        command
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", self.dir.display()));
        self.process = Some(Process::spawn(command));
        let port = self.port;
        wait_for(
            "the private FerretDB to listen",
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Kills it (SIGKILL: a crash, not a shutdown) and waits until its port is closed.
    pub async fn kill(&mut self) {
        let mut process = self.process.take().expect("FerretDB is running");
        process.signal(Signal::SIGKILL);
        process.wait_exit(Duration::from_secs(10)).await;
    }
}

impl Drop for PrivateFerret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A background task of a test, run until told to stop, or aborted when dropped.
struct Stoppable {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stoppable {
    /// Spawns `run`, giving it the receiver that resolves when [`Stoppable::stop`] is called.
    fn spawn<Fut>(run: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut) -> Self
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        Self {
            stop: Some(stop),
            task: tokio::spawn(run(stopped)),
        }
    }

    /// Signals the stop and waits for the task to finish what it has begun.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs notify-consumer's AMQP loop in-process until stopped or dropped.
pub struct ConsumerTask(Stoppable);

impl ConsumerTask {
    pub fn spawn(deps: Arc<Deps>) -> Self {
        Self(Stoppable::spawn(|stopped| {
            notify_consumer::amqp::run(deps, async move {
                let _ = stopped.await;
            })
        }))
    }

    /// Stops consuming and waits for in-flight messages to settle.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// Runs the outbox relay in-process until stopped or dropped, as
/// notify-consumer runs it beside its consumer (without the consumer, so a
/// test can read what it published from the queues).
pub struct RelayTask(Stoppable);

impl RelayTask {
    pub fn spawn(deps: Arc<Deps>) -> Self {
        Self(Stoppable::spawn(|stopped| async move {
            let worker = notify_consumer::Worker::new(deps);
            worker
                .relay()
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
            worker.publisher.close().await;
        }))
    }

    /// Lets the round in progress finish, then stops.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// A TCP listener that accepts connections and never answers: a broker
/// behind a network partition, or a stuck one, as a client sees it. Every
/// accepted socket is held open until the listener is dropped.
pub struct SilentBroker {
    /// An AMQP URI pointing at it.
    pub uri: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBroker {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                let mut held = Vec::new();
                while let Ok((socket, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    held.push(socket);
                }
            }
        });
        Self {
            uri: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            accepted,
            task,
        }
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bearer token of a message the relay published, checked: an event
/// token for `username`, signed with this deployment's key, that no HTTP
/// route accepts. Returns it.
pub fn event_token(deps: &Deps, message: &BasicGetMessage, username: &str) -> String {
    let header = authorization_header(message).expect("the message has an Authorization header");
    let token = header
        .strip_prefix("Bearer ")
        .expect("a bearer token")
        .to_owned();
    let claims = deps
        .tokens
        .verify_event(&token)
        .expect("signed with this deployment's key");
    assert_eq!(claims.sub, username);
    assert_eq!(claims.aud.as_deref(), Some(EVENT_AUDIENCE));
    assert!(
        deps.tokens.verify(&token).is_err(),
        "an event token passes as an access token"
    );
    token
}

/// Whether `text` contains any of `secrets` (all non-empty).
pub fn leaks<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    secrets
        .into_iter()
        .find(|secret| !secret.is_empty() && text.contains(secret))
}

/// The Authorization header of a consumed message, as text.
pub fn authorization_header(message: &BasicGetMessage) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get("Authorization")? {
        lapin::types::AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        _ => None,
    }
}

/// Exposes a `SecretString` for assertions.
pub fn expose(secret: &secrecy::SecretString) -> &str {
    secret.expose_secret()
}

/// A memory cgroup of one test's own, with a hard limit, as Kubernetes puts a
/// container in one: cgroup v2's `memory.max` where the memory controller is
/// enabled, else cgroup v1's `memory.limit_in_bytes`. `None` when neither can
/// be created here (not root, or no memory controller).
pub struct MemoryCgroup {
    path: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    pub fn create(limit_bytes: u64) -> Option<Self> {
        let name = format!("finapp-test-{}", uuid::Uuid::new_v4().simple());
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let candidates = own.lines().filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                let base = PathBuf::from("/sys/fs/cgroup").join(path);
                let enabled = std::fs::read_to_string(base.join("cgroup.subtree_control")).ok()?;
                enabled
                    .split_whitespace()
                    .any(|c| c == "memory")
                    .then(|| (base.join(&name), true))
            } else if controllers.split(',').any(|c| c == "memory") {
                Some((
                    PathBuf::from("/sys/fs/cgroup/memory")
                        .join(path)
                        .join(&name),
                    false,
                ))
            } else {
                None
            }
        });
        for (path, v2) in candidates {
            if std::fs::create_dir(&path).is_err() {
                continue;
            }
            let (file, swap) = if v2 {
                ("memory.max", Some("memory.swap.max"))
            } else {
                ("memory.limit_in_bytes", None)
            };
            let group = Self { path, v2 };
            if std::fs::write(group.path.join(file), limit_bytes.to_string()).is_ok() {
                if let Some(swap) = swap {
                    let _ = std::fs::write(group.path.join(swap), "0");
                }
                return Some(group);
            }
        }
        None
    }

    /// A command that joins this cgroup, then becomes `program`.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$1\"")
            .arg(self.path.join("cgroup.procs"))
            .arg(program);
        command
    }

    /// The most memory the group has used.
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// How many of the group's processes the kernel killed for memory.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once its processes are gone; drop the function first.
        let _ = std::fs::remove_dir(&self.path);
    }
}
