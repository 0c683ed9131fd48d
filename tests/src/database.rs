//! The default database of one test's own: a PostgreSQL cluster and a
//! FerretDB on it, each on a free port, set up as `scripts/services.sh` sets
//! up the shared one (durable commits included), so that a test can kill
//! either "like a crash" without disturbing other tests.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::process::Command;

use crate::{Process, Signal, free_port, wait_for, workspace_root};

/// The unprivileged user PostgreSQL runs as when the tests run as root
/// (`scripts/services.sh` creates it).
const PG_USER: &str = "finapp-postgres";

/// PostgreSQL and FerretDB for one test.
pub struct PrivateDatabase {
    /// `MONGODB_URI` for the test's processes.
    pub uri: String,
    dir: PathBuf,
    pg_port: u16,
    mongo_port: u16,
    postgres: Option<Process>,
    ferretdb: Option<Process>,
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Debian's PostgreSQL server binaries: the newest major version installed.
fn pg_bindir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed: run scripts/services.sh (scripts/test.sh does)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
}

/// `program` from PostgreSQL's binaries, run as [`PG_USER`] when we are root
/// (PostgreSQL refuses to run as root).
fn pg_command(program: &str) -> Command {
    let binary = pg_bindir().join(program);
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", PG_USER, "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

async fn run(mut command: Command, what: &str) {
    let output = command.output().await.expect("the command starts");
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn wait_listening(what: &str, port: u16) {
    wait_for(what, Duration::from_secs(60), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

async fn wait_closed(what: &str, port: u16) {
    wait_for(what, Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .err()
            .map(|_| ())
    })
    .await;
}

impl PrivateDatabase {
    /// A new cluster (durable commits: fsync and synchronous_commit on) with
    /// FerretDB's database and the GIN twins of `tools/ferretdb/gin-twins.sql`,
    /// and FerretDB on it.
    pub async fn start() -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        // Under /var/tmp: the unprivileged user cannot reach a temp dir under /root.
        let dir = PathBuf::from("/var/tmp").join(format!("finapp-db-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            run(
                {
                    let mut chown = Command::new("chown");
                    chown.arg(PG_USER).arg(&dir);
                    chown
                },
                "chown the data directory",
            )
            .await;
        }
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"]);
        run(initdb, "initdb").await;
        let mut database = Self {
            uri: String::new(),
            dir,
            pg_port: free_port(),
            mongo_port: free_port(),
            postgres: None,
            ferretdb: None,
        };
        database.uri = format!("mongodb://127.0.0.1:{}", database.mongo_port);
        database.start_postgres().await;
        let mut createdb = pg_command("createdb");
        createdb
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(database.pg_port.to_string())
            .arg("ferretdb");
        run(createdb, "createdb").await;
        let mut twins = pg_command("psql");
        twins
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "ferretdb"])
            .args(["-v", "ON_ERROR_STOP=1", "-p"])
            .arg(database.pg_port.to_string())
            .arg("-f")
            .arg(workspace_root().join("tools/ferretdb/gin-twins.sql"));
        run(twins, "apply gin-twins.sql").await;
        database.start_ferretdb().await;
        database
    }

    /// Starts PostgreSQL on its data (after a kill it recovers from its WAL).
    pub async fn start_postgres(&mut self) {
        let mut postgres = pg_command("postgres");
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.pg_port.to_string())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"]);
        let postgres = Process::spawn(postgres);
        let port = self.pg_port.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = pg_command("pg_isready");
            ready.args(["-q", "-h", "127.0.0.1", "-p", &port]);
            if ready.status().await.is_ok_and(|status| status.success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not accept connections in 60 s:\n{}",
                postgres.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.postgres = Some(postgres);
    }

    /// Kills PostgreSQL: SIGKILL to the postmaster and every backend at once
    /// (backends lead process groups of their own, so a kill of the group
    /// would leave them holding the shared memory). As root, `runuser` is
    /// spared, so that it reaps the postmaster: a postmaster left a zombie
    /// would hold its lock file against the restart.
    pub async fn kill_postgres(&mut self) {
        let mut postgres = self.postgres.take().expect("PostgreSQL is running");
        let root = postgres.id().expect("PostgreSQL is running");
        let doomed = if running_as_root() {
            descendants(root)
        } else {
            std::iter::once(i32::try_from(root).unwrap())
                .chain(descendants(root))
                .collect()
        };
        for pid in doomed {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        postgres.wait_exit(Duration::from_secs(10)).await;
        wait_closed("the private PostgreSQL's port to close", self.pg_port).await;
    }

    /// Starts FerretDB on PostgreSQL, as `scripts/services.sh` does.
    pub async fn start_ferretdb(&mut self) {
        let binary = std::env::var_os("FINAPP_FERRETDB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".dev/bin/finapp-ferretdb"));
        let mut ferretdb = Command::new(binary);
        ferretdb
            .arg("--handler=postgresql")
            .arg(format!(
                "--postgresql-url=postgres://postgres@127.0.0.1:{}/ferretdb",
                self.pg_port
            ))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.mongo_port))
            .arg("--log-level=warn");
        self.ferretdb = Some(Process::spawn(ferretdb));
        wait_listening("the private FerretDB to listen", self.mongo_port).await;
    }

    /// Kills FerretDB (SIGKILL).
    pub async fn kill_ferretdb(&mut self) {
        let mut ferretdb = self.ferretdb.take().expect("FerretDB is running");
        ferretdb.signal(Signal::SIGKILL);
        ferretdb.wait_exit(Duration::from_secs(10)).await;
        wait_closed("the private FerretDB's port to close", self.mongo_port).await;
    }

    /// Stops FerretDB for `pause` (SIGSTOP, then SIGCONT): a server that
    /// holds its connections and answers nothing.
    pub async fn pause_ferretdb(&self, pause: Duration) {
        let ferretdb = self.ferretdb.as_ref().expect("FerretDB is running");
        ferretdb.signal(Signal::SIGSTOP);
        tokio::time::sleep(pause).await;
        ferretdb.signal(Signal::SIGCONT);
    }
}

/// Every process below `root` (children, their children...), read from /proc.
fn descendants(root: u32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    // "pid (comm) state ppid ...": the name may hold spaces.
                    let after = &stat[stat.rfind(')')? + 2..];
                    let ppid = after.split(' ').nth(1)?.parse().ok()?;
                    Some((pid, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![i32::try_from(root).unwrap_or(0)];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        next += 1;
    }
    found.split_off(1)
}

impl Drop for PrivateDatabase {
    fn drop(&mut self) {
        // The processes are killed as they drop (PostgreSQL's backends
        // too); then the data goes.
        self.ferretdb.take();
        if let Some(postgres) = self.postgres.take() {
            for pid in postgres.id().map(descendants).unwrap_or_default() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
