//! What one benchmark run does, read from `BENCH_*` environment variables.
//!
//! The defaults meet the issue (3 runs per figure, 20 cold starts, 100,000
//! requests for the memory check, 20,000 events); `BENCH_QUICK=1` shrinks
//! everything for trying the harness out. Every value can be set on its own.

use std::{path::PathBuf, time::Duration};

/// Every function binary, in the order the report lists them.
pub const FUNCTIONS: [&str; 12] = [
    "signup",
    "login",
    "apply",
    "status",
    "dashboard-info",
    "financing-options",
    "select-financing-option",
    "update-status",
    "admin-applications",
    "admin-update-status",
    "analytics",
    "notify-consumer",
];

/// The scenarios, by the names `BENCH_ONLY` takes.
pub const SCENARIOS: [&str; 8] = [
    "status-apply",
    "login",
    "framework",
    "pipeline",
    "cold-start",
    "memory",
    "artifacts",
    "scale",
];

#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// Length of each wrk run (and of each ceiling loop).
    pub duration: Duration,
    /// Length of each `/login` run: a request takes seconds at cost 12, so runs are longer.
    pub login_duration: Duration,
    /// Unrecorded load before the first run of a scenario.
    pub warmup: Duration,
    /// Connections (and ceiling tasks) for `/status` and `/apply`.
    pub connections: usize,
    /// wrk threads for the saturating runs.
    pub wrk_threads: usize,
    pub users: usize,
    pub applications_per_user: usize,
    pub cold_starts: usize,
    pub memory_requests: u64,
    pub memory_functions: Vec<String>,
    pub events: usize,
    /// How long to wait for other work on the machine to finish before starting.
    pub quiet_wait: Duration,
    /// Report `target/release` sizes instead of `cargo lambda build` bootstraps.
    pub skip_lambda: bool,
    /// The `scale` scenario's database: users, applications, analytics events.
    pub scale_users: usize,
    pub scale_applications: usize,
    pub scale_events: usize,
    /// Sizes (applications) of the `/status` growth curve.
    pub scale_growth: Vec<usize>,
    /// Only these scenarios (all when empty).
    pub only: Vec<String>,
    pub workspace: PathBuf,
    /// Where the release binaries are.
    pub bin_dir: PathBuf,
    /// Scratch space: wrk scripts and the functions' logs.
    pub scratch: PathBuf,
    pub output: PathBuf,
}

impl Settings {
    pub fn from_env() -> Self {
        let quick = flag("BENCH_QUICK");
        let pick = |full: u64, short: u64| if quick { short } else { full };
        let workspace = std::env::var_os("BENCH_WORKSPACE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .expect("the bench crate lives inside the workspace")
                    .to_path_buf()
            });
        let list = |name: &str, default: &str| -> Vec<String> {
            std::env::var(name)
                .unwrap_or_else(|_| default.to_owned())
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Self {
            quick,
            runs: number("BENCH_RUNS", pick(3, 1)) as usize,
            duration: Duration::from_secs(number("BENCH_DURATION_SECS", pick(10, 3))),
            login_duration: Duration::from_secs(number("BENCH_LOGIN_DURATION_SECS", pick(30, 6))),
            warmup: Duration::from_secs(number("BENCH_WARMUP_SECS", pick(3, 1))),
            connections: number("BENCH_CONNECTIONS", 16) as usize,
            wrk_threads: number("BENCH_WRK_THREADS", 2) as usize,
            users: number("BENCH_USERS", 16) as usize,
            applications_per_user: number("BENCH_APPLICATIONS_PER_USER", 25) as usize,
            cold_starts: number("BENCH_COLD_STARTS", pick(20, 3)) as usize,
            memory_requests: number("BENCH_MEMORY_REQUESTS", pick(100_000, 8_000)),
            memory_functions: list("BENCH_MEMORY_FUNCTIONS", "apply,financing-options"),
            events: number("BENCH_EVENTS", pick(20_000, 2_000)) as usize,
            skip_lambda: flag("BENCH_SKIP_LAMBDA"),
            quiet_wait: Duration::from_secs(number("BENCH_QUIET_WAIT_SECS", pick(600, 0))),
            scale_users: number("BENCH_SCALE_USERS", pick(1_000, 100)) as usize,
            scale_applications: number("BENCH_SCALE_APPLICATIONS", pick(100_000, 10_000)) as usize,
            scale_events: number("BENCH_SCALE_EVENTS", pick(1_000_000, 20_000)) as usize,
            scale_growth: list(
                "BENCH_SCALE_GROWTH",
                if quick {
                    "1000,10000"
                } else {
                    "1000,10000,100000"
                },
            )
            .iter()
            .map(|size| size.parse().expect("BENCH_SCALE_GROWTH: whole numbers"))
            .collect(),
            only: list("BENCH_ONLY", ""),
            bin_dir: std::env::var_os("BENCH_BIN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target/release")),
            scratch: workspace.join("target/bench"),
            output: std::env::var_os("BENCH_OUTPUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("BENCHMARKS.md")),
            workspace,
        }
    }

    /// Whether `scenario` is part of this run.
    pub fn runs_scenario(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == scenario)
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The settings as `NAME=value` pairs, for the report's "Commands" section.
    pub fn describe(&self) -> Vec<String> {
        vec![
            format!("BENCH_QUICK={}", u8::from(self.quick)),
            format!("BENCH_RUNS={}", self.runs),
            format!("BENCH_DURATION_SECS={}", self.duration.as_secs()),
            format!(
                "BENCH_LOGIN_DURATION_SECS={}",
                self.login_duration.as_secs()
            ),
            format!("BENCH_WARMUP_SECS={}", self.warmup.as_secs()),
            format!("BENCH_CONNECTIONS={}", self.connections),
            format!("BENCH_WRK_THREADS={}", self.wrk_threads),
            format!("BENCH_USERS={}", self.users),
            format!("BENCH_APPLICATIONS_PER_USER={}", self.applications_per_user),
            format!("BENCH_COLD_STARTS={}", self.cold_starts),
            format!("BENCH_MEMORY_REQUESTS={}", self.memory_requests),
            format!("BENCH_MEMORY_FUNCTIONS={}", self.memory_functions.join(",")),
            format!("BENCH_EVENTS={}", self.events),
            format!("BENCH_SKIP_LAMBDA={}", u8::from(self.skip_lambda)),
            format!("BENCH_QUIET_WAIT_SECS={}", self.quiet_wait.as_secs()),
            format!("BENCH_SCALE_USERS={}", self.scale_users),
            format!("BENCH_SCALE_APPLICATIONS={}", self.scale_applications),
            format!("BENCH_SCALE_EVENTS={}", self.scale_events),
            format!(
                "BENCH_SCALE_GROWTH={}",
                self.scale_growth
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            format!("BENCH_ONLY={}", self.only.join(",")),
        ]
    }
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false" | "no"))
}

fn number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {raw:?}")),
        Err(_) => default,
    }
}
