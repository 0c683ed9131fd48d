//! The scenarios. Each one starts the release binaries it needs, warms them up,
//! and measures its figure and its ceiling back to back in every run, so each
//! ratio compares numbers taken within seconds of each other.

use std::{path::PathBuf, sync::Arc, time::Duration};

use finapp_broker::Publisher;
use finapp_shared::store::{AnalyticsDoc, Store};
use serde_json::json;
use tokio::runtime::Runtime;

use crate::{
    ceilings,
    error::{Error, Result},
    fixture::{Fixture, Space, mongo, pipeline_space},
    machine,
    pipeline::{self, PipelineRun, Source},
    procs::Process,
    settings::{FUNCTIONS, Settings},
    stats::{Comparison, Figure, Series},
    wrk::{Load, Script, Stagger},
};

/// The body every `POST /apply` sends.
pub(crate) const APPLY_BODY: &str =
    r#"{"loan_types": ["personal"], "amount": 15000, "purpose": "Car purchase"}"#;
/// A saturating request slower than this counts as a timeout error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `/login` requests queue behind each other's bcrypt for seconds.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between the `/healthz` probes sent while `/login` is saturated.
pub const PROBE_PAUSE: Duration = Duration::from_millis(10);
/// bcrypt verifications timed for each run's ceiling.
pub const VERIFY_SAMPLES: usize = 3;
/// Documents per `insert_many` in the batched write diagnostic, and its writers.
pub const INSERT_BATCH: usize = 100;
pub const BATCH_WRITERS: usize = 4;
/// The consumer's batch: at most this many deliveries per `record_analytics`.
pub const CONSUMER_BATCH: usize = 128;
/// RabbitMQ's default `frame_max`. lapin sizes each of its two I/O buffers at
/// 32 frames of the URI's `frame_max`; left unset, it grows them to this after
/// negotiation, touching 8 MiB. The functions now always state 8 KiB; the
/// diagnostic row states this size instead, to show the stated size is cheap too.
const BROKER_FRAME_MAX: u32 = 131_072;
/// Memory is read after each quarter of the requests.
const MEMORY_CHECKPOINTS: u64 = 4;

/// A wrk command line the report shows.
#[derive(Clone, Debug)]
pub struct CommandLine {
    pub scenario: &'static str,
    pub line: String,
}

/// Scenario 1: `/status` and `/apply` against the raw driver.
#[derive(Clone, Debug, Default)]
pub struct DbBound {
    pub status: Comparison,
    pub apply: Comparison,
    /// The apply ceiling plus the confirmed publish each request also makes.
    pub apply_with_publish: Series,
}

/// Scenario 2: `/login` against cores / bcrypt time, and `/healthz` meanwhile.
#[derive(Clone, Debug, Default)]
pub struct Login {
    pub cores: usize,
    pub cost: u32,
    pub verify: Vec<Duration>,
    pub login: Comparison,
    pub healthz: Series,
    /// Diagnostic: one more run with only `cores` connections, `(login, healthz)`.
    pub few_connections: Option<(Figure, Figure)>,
}

/// Scenario 3: bare axum's `/healthz` inside a function's stack against
/// bare axum.
#[derive(Clone, Debug, Default)]
pub struct Framework {
    /// bench-layers `function`: the hello handler inside `http::app`, with
    /// the Prometheus recorder and the functions' accept loop.
    pub function: Series,
    pub hello: Series,
    /// Diagnostic: bench-layers `bare`, the same server as bench-hello in
    /// the function row's binary, so that the two rows differ only by what
    /// each request runs, not by how two binaries' code is laid out.
    pub same_binary: Series,
    /// Diagnostic: the function with `RUST_LOG=warn`, so nothing at `info`
    /// is even considered.
    pub quiet: Series,
    /// Diagnostic: the function with its access log on
    /// (`RUST_LOG=info,access=debug`), one JSON line per request.
    pub access_log: Series,
    /// Everything on: the access log, and every request a span exported over
    /// OTLP to a sink in the bench process that answers as a collector would.
    pub traced: Series,
    /// The `status` function's own `/healthz`: its accept loop and router,
    /// but none of `http::app`'s layers (the probes are never limited).
    pub probe: Series,
}

impl Framework {
    /// The function's throughput / bare axum's, per run.
    pub fn ratios(&self) -> Vec<f64> {
        Comparison {
            achieved: self.function.clone(),
            ceiling: self.hello.clone(),
        }
        .ratios()
    }
}

/// An OTLP/HTTP endpoint on a free port of this process that reads every
/// export and answers it with an empty 200, as a collector that accepted it
/// does; it serves on the bench's runtime until the process ends.
async fn otlp_sink() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let accept = axum::Router::new().fallback(|_body: axum::body::Bytes| async {
        ([("content-type", "application/x-protobuf")], "")
    });
    tokio::spawn(async move { axum::serve(listener, accept).await });
    Ok(address)
}

/// Scenario 5 (and the idle half of 6): one function's starts.
#[derive(Clone, Debug, Default)]
pub struct ColdStart {
    pub function: String,
    pub ready: Vec<Duration>,
    pub rss_kib: Vec<u64>,
    /// The anonymous part of it (heap, stacks); the rest is file-backed,
    /// mostly the executable's pages.
    pub rss_anon_kib: Vec<u64>,
    /// OS threads at that moment (runtime workers, driver and broker threads).
    pub threads: Vec<u64>,
    /// Why a row that is not one of the functions as deployed is measured
    /// (bench-hello, a configuration variant); such rows meet no target.
    pub note: Option<&'static str>,
}

/// Scenario 6: one function's memory under sustained load.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub function: String,
    pub route: String,
    pub idle_kib: u64,
    /// `(requests served so far, RSS in KiB)` after each quarter.
    pub checkpoints: Vec<(u64, u64)>,
    pub errors: u64,
}

/// Scenario 7: sizes in bytes.
#[derive(Clone, Debug, Default)]
pub struct Artifacts {
    /// Whether the `cargo lambda build --release` bootstraps were measured.
    pub lambda: bool,
    /// The bootstraps' architecture, read from their ELF header.
    pub architecture: String,
    /// `(function, bootstrap size, target/release binary size)`.
    pub sizes: Vec<(String, Option<u64>, Option<u64>)>,
    /// bench-hello's `target/release` size, for comparison.
    pub hello: Option<u64>,
}

/// One row of the cold-start table: which binary, started how.
struct StartSubject {
    label: String,
    binary: &'static str,
    env: Vec<(String, String)>,
    note: Option<&'static str>,
}

/// What the scenarios share: settings, data, the async runtime the drivers
/// need, and the command lines used so far.
pub struct Bench<'a> {
    pub settings: &'a Settings,
    pub fixture: &'a Fixture,
    pub runtime: &'a Runtime,
    pub commands: Vec<CommandLine>,
}

impl Bench<'_> {
    fn log(&self, name: &str) -> PathBuf {
        self.settings
            .scratch
            .join("logs")
            .join(format!("{name}.log"))
    }

    pub(crate) fn start(&self, function: &str, space: &Space) -> Result<Process> {
        Process::http(
            &self.settings.binary(function),
            &self.fixture.env_in(space),
            &self.log(function),
        )
    }

    /// A saturating load: the configured threads, connections and duration.
    pub(crate) fn saturate(&self, process: &Process, script: Script) -> Load {
        Load {
            url: process.url(&script.path),
            threads: self.settings.wrk_threads,
            connections: self.settings.connections,
            duration: self.settings.duration,
            timeout: REQUEST_TIMEOUT,
            script,
        }
    }

    pub(crate) fn record(&mut self, scenario: &'static str, load: &Load, name: &str) {
        self.commands.push(CommandLine {
            scenario,
            line: load.command_line(&self.settings.scratch, name),
        });
    }

    /// Unrecorded load, so caches, pools and connections are warm.
    pub(crate) fn warm_up(&self, load: &Load, name: &str) -> Result<()> {
        let warm = Load {
            duration: self.settings.warmup,
            ..load.clone()
        };
        warm.run(&self.settings.scratch, &format!("{name}-warmup"))?;
        Ok(())
    }

    /// `GET /status` and `POST /apply`, 16 connections, against the raw driver
    /// doing the same queries and writes from 16 tasks.
    pub fn db_bound(&mut self) -> Result<DbBound> {
        let (settings, fixture, runtime) = (self.settings, self.fixture, self.runtime);
        let stored =
            runtime.block_on(ceilings::applications_of(&fixture.store, &fixture.users[0]))?;
        if stored != settings.applications_per_user as u64 {
            return Err(Error::Setup(format!(
                "{} has {stored} applications, expected {}",
                fixture.users[0], settings.applications_per_user
            )));
        }
        let status = self.start("status", &fixture.space)?;
        let apply = self.start("apply", &fixture.apply_space)?;
        let status_load =
            self.saturate(&status, Script::get("/status").with_tokens(&fixture.tokens));
        let apply_load = self.saturate(
            &apply,
            Script::post("/apply", APPLY_BODY.into()).with_tokens(&fixture.writer_tokens),
        );
        self.record("GET /status", &status_load, "status");
        self.record("POST /apply", &apply_load, "apply");
        let (concurrency, duration) = (settings.connections, settings.duration);
        let mut result = DbBound::default();

        self.warm_up(&status_load, "status")?;
        runtime.block_on(ceilings::status_queries(
            &fixture.store,
            &fixture.users,
            concurrency,
            settings.warmup,
        ));
        for run in 1..=settings.runs {
            eprintln!("[bench] GET /status run {run}/{}", settings.runs);
            result
                .status
                .ceiling
                .push(runtime.block_on(ceilings::status_queries(
                    &fixture.store,
                    &fixture.users,
                    concurrency,
                    duration,
                )));
            result
                .status
                .achieved
                .push(status_load.run(&settings.scratch, "status")?);
        }

        let apply_config = fixture.config_in(&fixture.apply_space)?;
        let events = Arc::new(Publisher::new(&apply_config));
        let writes = |events: Option<Arc<Publisher>>, duration| {
            runtime.block_on(ceilings::apply_writes(
                &fixture.apply_store,
                &fixture.writers,
                &fixture.writer_tokens,
                events,
                ceilings::ApplyOps::Writes,
                concurrency,
                duration,
            ))
        };
        self.warm_up(&apply_load, "apply")?;
        writes(Some(events.clone()), settings.warmup);
        for run in 1..=settings.runs {
            eprintln!("[bench] POST /apply run {run}/{}", settings.runs);
            result.apply.ceiling.push(writes(None, duration));
            result
                .apply
                .achieved
                .push(apply_load.run(&settings.scratch, "apply")?);
            result
                .apply_with_publish
                .push(writes(Some(events.clone()), duration));
        }
        runtime.block_on(events.close());
        status.stop()?;
        apply.stop()?;
        Ok(result)
    }

    /// `POST /login` at the default cost against cores / (one verify), with a
    /// light `/healthz` probe on the same process meanwhile.
    pub fn login(&mut self) -> Result<Login> {
        let (settings, fixture) = (self.settings, self.fixture);
        let cost = fixture.config.bcrypt_cost;
        let cores = machine::cores();
        let process = self.start("login", &fixture.space)?;
        let body = json!({ "username": fixture.login_user, "password": fixture.login_password });
        let mut load = Load {
            duration: settings.login_duration,
            timeout: LOGIN_TIMEOUT,
            ..self.saturate(&process, Script::post("/login", body.to_string()))
        };
        let probe = Load {
            url: process.url("/healthz"),
            threads: 1,
            connections: 1,
            duration: settings.login_duration,
            timeout: REQUEST_TIMEOUT,
            script: Script {
                delay: Some(PROBE_PAUSE),
                ..Script::get("/healthz")
            },
        };
        self.record("POST /login", &load, "login");
        self.record("POST /login", &probe, "login-healthz");

        let reference = bcrypt::hash(&fixture.login_password, cost)
            .map_err(|err| Error::Setup(format!("bcrypt: {err}")))?;
        // A few logins; this also waits out the dummy hash computed at start-up.
        let warm = Load {
            threads: 1,
            connections: cores,
            duration: settings.warmup.max(Duration::from_secs(2)),
            ..load.clone()
        };
        warm.run(&settings.scratch, "login-warmup")?;

        let mut result = Login {
            cores,
            cost,
            ..Login::default()
        };
        let per_thread = (load.connections / load.threads).max(1);
        for run in 1..=settings.runs {
            eprintln!("[bench] POST /login run {run}/{}", settings.runs);
            let verify =
                ceilings::bcrypt_verify_time(&reference, &fixture.login_password, VERIFY_SAMPLES);
            result.verify.push(verify);
            result.login.ceiling.push(Figure {
                rps: cores as f64 / verify.as_secs_f64(),
                p50: verify,
                p99: verify,
                ..Figure::default()
            });
            // Spread the first requests over one round of bcrypt work, so
            // completions are steady rather than in batches of `connections`.
            load.script.stagger = Some(Stagger {
                step: verify * load.threads as u32 / cores as u32,
                connections_per_thread: per_thread,
            });
            let logins = load.start(&settings.scratch, "login")?;
            let probes = probe.start(&settings.scratch, "login-healthz")?;
            result.login.achieved.push(logins.finish()?);
            result.healthz.push(probes.finish()?);
        }
        // As many logins in flight as there are cores: still enough to keep
        // them busy, but no queue of runnable bcrypt threads beside the runtime.
        eprintln!("[bench] POST /login with {cores} connections (diagnostic)");
        let mut few = Load {
            connections: cores,
            threads: load.threads.min(cores),
            ..load.clone()
        };
        few.script.stagger = None;
        self.record("POST /login (diagnostic)", &few, "login-few");
        let logins = few.start(&settings.scratch, "login-few")?;
        let probes = probe.start(&settings.scratch, "login-few-healthz")?;
        result.few_connections = Some((logins.finish()?, probes.finish()?));
        process.stop()?;
        Ok(result)
    }

    /// bench-hello's `GET /healthz` with and without a function's stack
    /// around it (bench-layers `function`), and the `status` function's own
    /// `/healthz`, which the stack leaves out.
    pub fn framework(&mut self) -> Result<Framework> {
        let settings = self.settings;
        let layered = |rust_log: &str, extra: &[(&str, String)], log: &str| {
            let mut env = vec![("RUST_LOG".to_owned(), rust_log.to_owned())];
            env.extend(
                extra
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), value.clone())),
            );
            Process::http_with_args(
                &settings.binary("bench-layers"),
                &["function"],
                &env,
                &self.log(log),
            )
        };
        let function = layered("info", &[], "layers-function")?;
        let same_binary = Process::http_with_args(
            &settings.binary("bench-layers"),
            &["bare"],
            &[("RUST_LOG".to_owned(), "info".to_owned())],
            &self.log("layers-bare"),
        )?;
        let quiet = layered("warn", &[], "layers-quiet")?;
        let access_log = layered("info,access=debug", &[], "layers-access-log")?;
        let sink = self.runtime.block_on(otlp_sink())?;
        let traced = layered(
            "info,access=debug",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}"))],
            "layers-traced",
        )?;
        let probe = self.start("status", &self.fixture.space)?;
        let hello = Process::http(
            &settings.binary("bench-hello"),
            &[],
            &self.log("bench-hello"),
        )?;
        let loads = [
            (
                self.saturate(&function, Script::get("/healthz")),
                "healthz-function",
            ),
            (
                self.saturate(&quiet, Script::get("/healthz")),
                "healthz-quiet",
            ),
            (
                self.saturate(&hello, Script::get("/healthz")),
                "healthz-hello",
            ),
            (
                self.saturate(&same_binary, Script::get("/healthz")),
                "healthz-same-binary",
            ),
            (
                self.saturate(&access_log, Script::get("/healthz")),
                "healthz-access-log",
            ),
            (
                self.saturate(&traced, Script::get("/healthz")),
                "healthz-traced",
            ),
            (
                self.saturate(&probe, Script::get("/healthz")),
                "healthz-status-probe",
            ),
        ];
        for (load, name) in &loads {
            self.record("GET /healthz", load, name);
            self.warm_up(load, name)?;
        }
        let mut result = Framework::default();
        for run in 1..=settings.runs {
            eprintln!("[bench] GET /healthz run {run}/{}", settings.runs);
            let series = [
                &mut result.function,
                &mut result.quiet,
                &mut result.hello,
                &mut result.same_binary,
                &mut result.access_log,
                &mut result.traced,
                &mut result.probe,
            ];
            for ((load, name), series) in loads.iter().zip(series) {
                series.push(load.run(&settings.scratch, name)?);
            }
        }
        function.stop()?;
        quiet.stop()?;
        access_log.stop()?;
        traced.stop()?;
        probe.stop()?;
        hello.stop()?;
        same_binary.stop()?;
        Ok(result)
    }

    /// Events published, consumed by notify-consumer and recorded, per run in
    /// a fresh space with a freshly started consumer.
    pub fn pipeline(&mut self) -> Result<Vec<PipelineRun>> {
        let (settings, fixture, runtime) = (self.settings, self.fixture, self.runtime);
        let mut runs = Vec::new();
        for run in 0..settings.runs {
            eprintln!("[bench] event pipeline run {}/{}", run + 1, settings.runs);
            let space = pipeline_space(&fixture.run, run);
            // The consumer's write alone, in a collection of its own in the same database.
            let config = fixture.config_in(&space)?;
            let store = runtime.block_on(Store::connect(&config)).map_err(mongo)?;
            let scratch = store
                .database()
                .collection::<AnalyticsDoc>("user_analytics_ceiling");
            let insert_ceiling = runtime.block_on(ceilings::analytics_inserts(
                scratch.clone(),
                1,
                settings.connections,
                settings.duration,
            ));
            let batched_ceiling = runtime.block_on(ceilings::analytics_inserts(
                scratch,
                INSERT_BATCH,
                BATCH_WRITERS,
                settings.duration,
            ));
            let record_ceiling = runtime.block_on(ceilings::recorded_analytics(
                store.clone(),
                Arc::new(fixture.users.clone()),
                CONSUMER_BATCH,
                BATCH_WRITERS,
                settings.duration,
            ));
            runtime.block_on(space.remove())?;
            for source in Source::ALL {
                // A fresh space per source: empty counters, outbox and queues.
                let space = pipeline_space(&fixture.run, run * Source::ALL.len() + source as usize);
                let consumer = Process::consumer(
                    &settings.binary("notify-consumer"),
                    &fixture.env_in(&space),
                    &self.log("notify-consumer"),
                )?;
                let mut result = runtime.block_on(pipeline::publish_and_wait(
                    fixture,
                    &space,
                    settings.events,
                    source,
                ))?;
                consumer.stop()?;
                (result.left_in_queues, result.dead_lettered) =
                    runtime.block_on(pipeline::queue_depths(&space))?;
                result.insert_ceiling = insert_ceiling.rps;
                result.batched_ceiling = batched_ceiling.rps;
                result.record_ceiling = record_ceiling.rps;
                runtime.block_on(space.remove())?;
                runs.push(result);
            }
        }
        Ok(runs)
    }

    /// Every function started `cold_starts` times against an indexed, empty
    /// space: exec to the first 200 on `/healthz` (notify-consumer: to its
    /// "consuming" line), and the RSS at that moment.
    pub fn cold_starts(&mut self) -> Result<Vec<ColdStart>> {
        let (settings, fixture) = (self.settings, self.fixture);
        let env = fixture.env_in(&fixture.cold_space);
        let mut subjects: Vec<StartSubject> = FUNCTIONS
            .iter()
            .map(|function| StartSubject {
                label: (*function).to_owned(),
                binary: function,
                env: env.clone(),
                note: None,
            })
            .collect();
        let broker_frames = env
            .iter()
            .map(|(name, value)| match name.as_str() {
                "RABBITMQ_URI" => (
                    name.clone(),
                    format!("{value}?frame_max={BROKER_FRAME_MAX}"),
                ),
                _ => (name.clone(), value.clone()),
            })
            .collect();
        subjects.push(StartSubject {
            label: format!("notify-consumer, `RABBITMQ_URI=...?frame_max={BROKER_FRAME_MAX}`"),
            binary: "notify-consumer",
            env: broker_frames,
            note: Some("diagnostic: RabbitMQ's default frame size"),
        });
        subjects.push(StartSubject {
            label: "bench-hello".into(),
            binary: "bench-hello",
            env: env.clone(),
            note: Some("reference: bare axum"),
        });
        let mut starts = Vec::new();
        for subject in subjects {
            eprintln!("[bench] cold starts of {}", subject.label);
            let binary = settings.binary(subject.binary);
            let log = self.log(&format!("cold-{}", subject.binary));
            let mut result = ColdStart {
                function: subject.label,
                note: subject.note,
                ..ColdStart::default()
            };
            for _ in 0..settings.cold_starts {
                let process = if subject.binary == "notify-consumer" {
                    Process::consumer(&binary, &subject.env, &log)?
                } else {
                    Process::http(&binary, &subject.env, &log)?
                };
                result.ready.push(process.ready_after);
                result.rss_kib.push(process.rss_kib()?);
                result.rss_anon_kib.push(process.rss_anon_kib()?);
                result.threads.push(process.threads()?);
                process.stop()?;
            }
            starts.push(result);
        }
        Ok(starts)
    }

    /// RSS of each chosen function while it serves `memory_requests` requests,
    /// read after each quarter.
    pub fn memory(&mut self) -> Result<Vec<Memory>> {
        let (settings, fixture) = (self.settings, self.fixture);
        let mut results = Vec::new();
        for function in &settings.memory_functions {
            let (space, script) = match function.as_str() {
                "status" => (
                    &fixture.space,
                    Script::get("/status").with_tokens(&fixture.tokens),
                ),
                "dashboard-info" => (
                    &fixture.space,
                    Script::get("/dashboard-info").with_tokens(&fixture.tokens),
                ),
                "financing-options" => (
                    &fixture.space,
                    Script::get("/financing-options").with_tokens(&fixture.tokens),
                ),
                "apply" => (
                    &fixture.apply_space,
                    Script::post("/apply", APPLY_BODY.into()).with_tokens(&fixture.writer_tokens),
                ),
                other => {
                    return Err(Error::Setup(format!(
                        "BENCH_MEMORY_FUNCTIONS: no load defined for {other} \
                         (status, apply, dashboard-info, financing-options)"
                    )));
                }
            };
            eprintln!(
                "[bench] memory of {function} over {} requests",
                settings.memory_requests
            );
            let process = self.start(function, space)?;
            let mut result = Memory {
                function: function.clone(),
                route: format!("{} {}", script.method, script.path),
                idle_kib: process.rss_kib()?,
                ..Memory::default()
            };
            let load = self.saturate(&process, script);
            self.record(
                "memory (run in chunks, each aimed at the next checkpoint)",
                &load,
                &format!("memory-{function}"),
            );
            let quarter = (settings.memory_requests / MEMORY_CHECKPOINTS).max(1);
            let mut next_checkpoint = quarter;
            let mut served = 0;
            let mut rate: Option<f64> = None;
            while served < settings.memory_requests {
                // wrk runs for whole seconds: aim each run at the next checkpoint.
                let seconds = rate.map_or(2.0, |rate| {
                    ((next_checkpoint - served) as f64 / rate)
                        .ceil()
                        .clamp(1.0, 300.0)
                });
                let chunk = Load {
                    duration: Duration::from_secs(seconds as u64),
                    ..load.clone()
                };
                let figure = chunk.run(&settings.scratch, &format!("memory-{function}"))?;
                served += figure.requests;
                result.errors += figure.errors;
                rate = Some(figure.rps.max(1.0));
                if served >= next_checkpoint {
                    result.checkpoints.push((served, process.rss_kib()?));
                    while next_checkpoint <= served {
                        next_checkpoint += quarter;
                    }
                }
            }
            process.stop()?;
            results.push(result);
        }
        Ok(results)
    }

    /// Bootstrap sizes from `cargo lambda build --release` (run by
    /// scripts/bench.sh), and the `target/release` binaries next to them.
    pub fn artifacts(&self) -> Artifacts {
        let size = |path: PathBuf| std::fs::metadata(path).ok().map(|meta| meta.len());
        let lambda = !self.settings.skip_lambda;
        let lambda_dir = self.settings.workspace.join("target/lambda");
        Artifacts {
            lambda,
            hello: size(self.settings.binary("bench-hello")),
            architecture: elf_architecture(&lambda_dir.join(FUNCTIONS[0]).join("bootstrap")),
            sizes: FUNCTIONS
                .iter()
                .map(|function| {
                    let bootstrap = lambda
                        .then(|| size(lambda_dir.join(function).join("bootstrap")))
                        .flatten();
                    (
                        (*function).to_owned(),
                        bootstrap,
                        size(self.settings.binary(function)),
                    )
                })
                .collect(),
        }
    }
}

/// The machine an ELF executable is built for, from its header's `e_machine`.
fn elf_architecture(path: &std::path::Path) -> String {
    let mut header = [0_u8; 20];
    let read = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header));
    match read {
        Ok(()) if header.starts_with(b"\x7fELF") => {
            match u16::from_le_bytes([header[18], header[19]]) {
                62 => "x86_64".into(),
                183 => "arm64 (aarch64)".into(),
                other => format!("ELF machine {other}"),
            }
        }
        _ => "unknown".into(),
    }
}
