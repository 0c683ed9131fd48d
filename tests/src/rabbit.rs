//! RabbitMQ nodes of a test's own: one node ([`PrivateBroker`]) or a
//! cluster of several ([`PrivateCluster`]), each on free ports with its own
//! data directory and Erlang cookie, so a test can stop, kill and restart
//! "the broker" without disturbing the shared node or other tests.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use tokio::process::Command;

use crate::{Process, Signal, free_port, wait_for};

/// How long a node may take to boot and accept AMQP (two shared cores).
const BOOT: Duration = Duration::from_secs(90);
/// How long one `rabbitmqctl` call may take.
const CTL: Duration = Duration::from_secs(60);

/// Debian's scripts under /usr/lib/rabbitmq/bin run as the caller; the
/// /usr/sbin wrappers re-run them as the rabbitmq user via su, which neither
/// keeps this process group nor can write our directories.
fn rabbit_program(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// A fresh directory for a test's nodes, with an Erlang cookie of its own in
/// `.erlang.cookie`: the nodes and `rabbitmqctl` run with `HOME` there, so
/// they trust each other and no other node (the shared one has its own).
fn node_home(kind: &str) -> (String, PathBuf) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let dir = std::env::temp_dir().join(format!("finapp-{kind}-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let cookie = dir.join(".erlang.cookie");
    std::fs::write(
        &cookie,
        uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
    (id, dir)
}

/// One RabbitMQ node: its name, ports, environment and, while it runs, its process.
pub struct RabbitNode {
    /// The Erlang node name, `finapp_<id>@localhost`.
    pub name: String,
    /// Its AMQP URI (guest, default vhost).
    pub uri: String,
    port: u16,
    env: Vec<(String, String)>,
    process: Option<Process>,
}

impl RabbitNode {
    /// A node named `finapp_<id>@localhost` with its data under `home/<id>`,
    /// not started yet.
    fn new(home: &Path, id: &str) -> Self {
        let dir = home.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let port = free_port();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let name = format!("finapp_{id}@localhost");
        let env = vec![
            ("HOME".to_string(), home.to_string_lossy().into_owned()),
            ("RABBITMQ_NODENAME".into(), name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT".into(), port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), free_port().to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
            ("RABBITMQ_LOG_BASE".into(), path("log")),
            ("RABBITMQ_PID_FILE".into(), path("pid")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                path("enabled_plugins"),
            ),
            ("RABBITMQ_CONF_ENV_FILE".into(), path("rabbitmq-env.conf")),
            // No busy-waiting schedulers: several nodes share this machine's
            // cores with the test and the bundle, and a node spinning for
            // work would take their time.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "+sbwt none +sbwtdcpu none +sbwtdio none".into(),
            ),
        ];
        Self {
            uri: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            name,
            port,
            env,
            process: None,
        }
    }

    /// Starts the node's process, without waiting for it to boot.
    fn spawn(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let mut command = Command::new(rabbit_program("rabbitmq-server"));
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.process = Some(Process::spawn(command));
    }

    /// Waits until the node accepts an AMQP connection.
    async fn accepting(&self) {
        let uri = self.uri.clone();
        wait_for(
            &format!("RabbitMQ node {} to accept AMQP", self.name),
            BOOT,
            || {
                let uri = uri.clone();
                async move {
                    let connection = Connection::connect(&uri, ConnectionProperties::default())
                        .await
                        .ok()?;
                    let _ = connection.close(200, "up".into()).await;
                    Some(())
                }
            },
        )
        .await;
    }

    /// Starts the node on its ports and data (durable queues survive) and
    /// waits until it accepts AMQP.
    pub async fn start(&mut self) {
        self.spawn();
        self.accepting().await;
    }

    /// Whether its process runs (it has not been stopped or killed).
    pub fn running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the node: SIGTERM, an orderly shutdown.
    pub async fn stop(&mut self) {
        self.end(Signal::SIGTERM, Duration::from_secs(60)).await;
    }

    /// Kills the node: SIGKILL to its process group (the Erlang VM and its
    /// helpers), a crash with no goodbye to its peers or clients.
    pub async fn kill(&mut self) {
        self.end(Signal::SIGKILL, Duration::from_secs(10)).await;
    }

    async fn end(&mut self, signal: Signal, timeout: Duration) {
        let mut process = self
            .process
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        process.signal(signal);
        process.wait_exit(timeout).await;
        let port = self.port;
        wait_for(
            &format!("the AMQP port of {} to close", self.name),
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .err()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Runs `rabbitmqctl -n <this node> ARGS` (or another of RabbitMQ's CLI
    /// tools) with the node's cookie; its stdout, or why it failed.
    pub async fn ctl(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(rabbit_program(tool));
        command
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(CTL, command.output())
            .await
            .map_err(|_| format!("{tool} {args:?} took over {CTL:?}"))?
            .map_err(|err| format!("{tool} did not start: {err}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{tool} {args:?} on {}: {}\n{stdout}{}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `rabbitmqctl ARGS`, panicking with its output if it fails.
    async fn must(&self, args: &[&str]) -> String {
        self.ctl("rabbitmqctl", args)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// The cluster's running nodes as this node sees them.
    pub async fn running_nodes(&self) -> Result<Vec<String>, String> {
        let status = self
            .ctl("rabbitmqctl", &["cluster_status", "--formatter", "json"])
            .await?;
        let status: Value =
            serde_json::from_str(&status).map_err(|err| format!("{err}: {status}"))?;
        Ok(status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|node| node.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// A RabbitMQ node of one test's own, so the test can stop and restart "the
/// broker" without disturbing other tests.
pub struct PrivateBroker {
    pub uri: String,
    node: RabbitNode,
    home: PathBuf,
}

impl PrivateBroker {
    pub async fn start() -> Self {
        let (id, home) = node_home("rabbit");
        let mut node = RabbitNode::new(&home, &id);
        node.start().await;
        Self {
            uri: node.uri.clone(),
            node,
            home,
        }
    }

    /// Starts the node again on the same ports and data (durable queues survive).
    pub async fn resume(&mut self) {
        self.node.start().await;
    }

    /// Stops the node (SIGTERM, as an orderly shutdown) and waits for it to exit.
    pub async fn stop(&mut self) {
        self.node.stop().await;
    }

    /// Kills the node (SIGKILL: a crash) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.node.kill().await;
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        drop(self.node.process.take());
        remove_home(&self.home);
    }
}

/// Removes a test's node directory once its nodes, just sent SIGKILL, have
/// stopped writing to it: a few tries, a moment apart.
fn remove_home(home: &Path) {
    for _ in 0..20 {
        if std::fs::remove_dir_all(home).is_ok() || !home.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A RabbitMQ cluster of one test's own: `size` nodes on this machine, each
/// on its own ports and data directory, sharing an Erlang cookie of their
/// own, joined with `rabbitmqctl` as an operator would (`stop_app`,
/// `join_cluster`, `start_app`). Every node is killed and every file removed
/// when it is dropped.
pub struct PrivateCluster {
    pub nodes: Vec<RabbitNode>,
    home: PathBuf,
}

impl PrivateCluster {
    /// Boots `size` nodes at once, joins the second and later ones to the
    /// first, and waits until each sees all of them running.
    pub async fn start(size: usize) -> Self {
        assert!(size >= 1);
        let (id, home) = node_home("rabbit-cluster");
        let mut nodes: Vec<RabbitNode> = (1..=size)
            .map(|n| RabbitNode::new(&home, &format!("{id}_{n}")))
            .collect();
        // Booting is most of the time: let the nodes boot side by side.
        for node in &mut nodes {
            node.spawn();
        }
        futures_util::future::join_all(nodes.iter().map(RabbitNode::accepting)).await;
        let seed = nodes[0].name.clone();
        for node in &nodes[1..] {
            node.must(&["stop_app"]).await;
            node.must(&["join_cluster", &seed]).await;
            node.must(&["start_app"]).await;
        }
        let cluster = Self { nodes, home };
        cluster.wait_all_running().await;
        cluster
    }

    /// `RABBITMQ_URI` for the cluster: every node's URI, comma-separated, in node order.
    pub fn uri(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.uri.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &RabbitNode {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }

    /// Kills the node named `name` with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self, name: &str) {
        let index = self.index_of(name);
        self.nodes[index].kill().await;
    }

    /// Starts the node named `name` again (it rejoins the cluster from its
    /// own data) and waits until every node sees every node running.
    pub async fn restart(&mut self, name: &str) {
        let index = self.index_of(name);
        self.nodes[index].start().await;
        self.wait_all_running().await;
    }

    /// Some running node, to ask the cluster things.
    fn any_running(&self) -> &RabbitNode {
        self.nodes
            .iter()
            .find(|node| node.running())
            .expect("a node of the cluster runs")
    }

    /// Waits until every running node reports all of the cluster's nodes running.
    async fn wait_all_running(&self) {
        let mut all: Vec<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        all.sort();
        let all = &all;
        wait_for(
            "every node of the cluster to see all of them running",
            BOOT,
            || async move {
                for node in &self.nodes {
                    let mut running = node.running_nodes().await.ok()?;
                    running.sort();
                    if running != *all {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// What a running node reports of `queue` (default vhost): its `name`,
    /// `type`, `leader` and `members`; `None` when it is not listed or no
    /// node answers.
    pub async fn queue(&self, queue: &str) -> Option<Value> {
        let listed = self
            .any_running()
            .ctl(
                "rabbitmqctl",
                &[
                    "list_queues",
                    "name",
                    "type",
                    "leader",
                    "members",
                    "--formatter",
                    "json",
                ],
            )
            .await
            .ok()?;
        let queues: Value = serde_json::from_str(&listed).ok()?;
        queues
            .as_array()?
            .iter()
            .find(|entry| entry["name"] == queue)
            .cloned()
    }

    /// The node that leads the quorum queue `queue`; `None` while it has
    /// none (an election) or the queue is not listed.
    pub async fn leader(&self, queue: &str) -> Option<String> {
        self.queue(queue)
            .await?
            .get("leader")?
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// Waits up to `timeout` for `queue` to have a leader other than `not`
    /// that runs, and returns it.
    pub async fn wait_leader_other_than(
        &self,
        queue: &str,
        not: &str,
        timeout: Duration,
    ) -> String {
        wait_for(
            &format!("a new leader of {queue}, not {not}"),
            timeout,
            || async {
                self.leader(queue).await.filter(|leader| {
                    leader != not && self.nodes.iter().any(|n| n.name == *leader && n.running())
                })
            },
        )
        .await
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            drop(node.process.take());
        }
        remove_home(&self.home);
    }
}
