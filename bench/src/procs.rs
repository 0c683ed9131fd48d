//! Function processes: starting one from a clean environment, waiting until it
//! is ready (its first 200 on `/healthz`, or the consumer's "consuming" line),
//! reading its memory, and stopping it with SIGTERM sent to its own pid only.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::error::{Error, Result};

/// How long a process may take to become ready before the run fails.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes: short against the 20 ms cold-start target,
/// long enough not to steal much of the starting process's CPU.
const PROBE_INTERVAL: Duration = Duration::from_micros(250);
/// The line notify-consumer logs once its consumers are registered.
const CONSUMING_LINE: &str = r#""message":"consuming""#;

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The status code `GET path` gets from `127.0.0.1:port`.
pub fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    // "HTTP/1.1 200" is all we need of the answer.
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 status line"))
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_number(pid, "VmRSS:")
}

/// The first number of `field`'s line in `/proc/<pid>/status`.
fn status_number(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error::Process(format!("no {field} in /proc/{pid}/status")))
}

/// A running function (or bench-hello) process.
pub struct Process {
    pub name: String,
    /// The HTTP port, for the HTTP functions.
    pub port: Option<u16>,
    /// From exec to ready: the first 200 on `/healthz`, or the "consuming" line.
    pub ready_after: Duration,
    child: Child,
    log: String,
    copier: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts an HTTP function on a free port and waits for its first 200 on `/healthz`.
    pub fn http(binary: &Path, env: &[(String, String)], log: &Path) -> Result<Self> {
        Self::http_with_args(binary, &[], env, log)
    }

    /// [`Self::http`] with command-line arguments.
    pub fn http_with_args(
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        let port = free_port()?;
        let log_file = File::create(log)?;
        let mut command = clean_command(binary, env);
        command
            .args(args)
            .env("PORT", port.to_string())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|err| spawn_error(binary, err))?;
        let deadline = started + READY_TIMEOUT;
        loop {
            if matches!(http_status(port, "/healthz"), Ok(200)) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                return Err(Error::Process(format!(
                    "{} exited with {status} before answering /healthz; see {}",
                    binary.display(),
                    log.display()
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Process(format!(
                    "{} did not answer /healthz within {READY_TIMEOUT:?}; see {}",
                    binary.display(),
                    log.display()
                )));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        Ok(Self {
            name: file_name(binary),
            port: Some(port),
            ready_after: started.elapsed(),
            child,
            log: log.display().to_string(),
            copier: None,
        })
    }

    /// Starts notify-consumer and waits for the line saying it is consuming.
    /// Its output is copied to `log` by a thread that watches for that line.
    pub fn consumer(binary: &Path, env: &[(String, String)], log: &Path) -> Result<Self> {
        let mut log_file = File::create(log)?;
        let mut command = clean_command(binary, env);
        command.stdout(Stdio::piped()).stderr(log_file.try_clone()?);
        let started = Instant::now();
        let mut child = command.spawn().map_err(|err| spawn_error(binary, err))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Process("stdout was not piped".into()))?;
        let (ready, is_ready) = mpsc::channel();
        let copier = std::thread::spawn(move || {
            let mut announced = false;
            for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
                if !announced && line.contains(CONSUMING_LINE) {
                    announced = true;
                    let _ = ready.send(Instant::now());
                }
                let _ = writeln!(log_file, "{line}");
            }
        });
        let mut process = Self {
            name: file_name(binary),
            port: None,
            ready_after: Duration::ZERO,
            child,
            log: log.display().to_string(),
            copier: Some(copier),
        };
        match is_ready.recv_timeout(READY_TIMEOUT) {
            Ok(at) => {
                process.ready_after = at - started;
                Ok(process)
            }
            Err(_) => Err(Error::Process(format!(
                "{} did not log that it is consuming within {READY_TIMEOUT:?}; see {}",
                binary.display(),
                log.display()
            ))),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port.unwrap_or_default())
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }

    /// The anonymous part of the RSS (heap, stacks) in KiB; the rest is
    /// file-backed, mostly the executable's own pages.
    pub fn rss_anon_kib(&self) -> Result<u64> {
        status_number(self.child.id(), "RssAnon:")
    }

    pub fn threads(&self) -> Result<u64> {
        status_number(self.child.id(), "Threads:")
    }

    /// Sends SIGTERM to this process (never to a group) and waits for it to exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = i32::try_from(self.child.id())
            .ok()
            .filter(|&pid| pid > 1)
            .ok_or_else(|| Error::Process(format!("{}: unusable pid", self.name)))?;
        if self.child.try_wait()?.is_none() {
            kill(Pid::from_raw(pid), Signal::SIGTERM)
                .map_err(|err| Error::Process(format!("SIGTERM to {}: {err}", self.name)))?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(Error::Process(format!(
                    "{} still running {STOP_TIMEOUT:?} after SIGTERM; see {}",
                    self.name, self.log
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only when `stop` was not reached (an error unwound past it).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `binary` with nothing of our environment but `env`, so every start is alike.
fn clean_command(binary: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null());
    command
}

fn spawn_error(binary: &Path, err: std::io::Error) -> Error {
    Error::Process(format!(
        "cannot start {}: {err} (run `cargo build --release --workspace --bins`)",
        binary.display()
    ))
}

fn file_name(binary: &Path) -> String {
    binary
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
