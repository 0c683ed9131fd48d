//! finapp-bench: runs every benchmark scenario against the release binaries
//! and writes BENCHMARKS.md. `scripts/bench.sh` builds, starts the services and
//! runs this; `BENCH_*` variables (see `settings.rs`) shape the run.

mod ceilings;
mod error;
mod fixture;
mod machine;
mod pipeline;
mod procs;
mod report;
mod scale;
mod scenarios;
mod settings;
mod stats;
mod wrk;

use std::process::{Command, ExitCode};

use crate::{
    error::Result,
    fixture::{Fixture, mongodb_uri},
    machine::Machine,
    report::Report,
    scenarios::Bench,
    settings::{FUNCTIONS, SCENARIOS, Settings},
};

/// The run waits (up to `BENCH_QUIET_WAIT_SECS`) for the CPUs to be less busy than this.
const QUIET_THRESHOLD: f64 = 0.15;

fn main() -> ExitCode {
    let settings = Settings::from_env();
    match run(&settings) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("[bench] some scenarios failed; see \"Problems in this run\"");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("[bench] failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios and writes the report; `Ok(false)` when a
/// scenario failed (the report then lists why).
fn run(settings: &Settings) -> Result<bool> {
    if let Some(unknown) = settings
        .only
        .iter()
        .find(|name| !SCENARIOS.contains(&name.as_str()))
    {
        return Err(error::Error::Setup(format!(
            "BENCH_ONLY: no scenario {unknown:?} (scenarios: {})",
            SCENARIOS.join(", ")
        )));
    }
    std::fs::create_dir_all(settings.scratch.join("logs"))?;
    let only_scale = !settings.only.is_empty() && settings.only.iter().all(|name| name == "scale");
    let needed: Vec<&str> = if only_scale {
        scale::FUNCTIONS.to_vec()
    } else {
        FUNCTIONS.iter().copied().chain(["bench-hello"]).collect()
    };
    for binary in &needed {
        let path = settings.binary(binary);
        if !path.exists() {
            return Err(error::Error::Setup(format!(
                "{} is missing: run `cargo build --release --workspace --bins`",
                path.display()
            )));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let machine = Machine::describe();
    // A build or another benchmark next to this one would skew every figure.
    let busy_before = machine::percent_busy(machine::wait_until_quiet(
        QUIET_THRESHOLD,
        settings.quiet_wait,
    ));
    eprintln!("[bench] CPU busy before the run: {busy_before}");
    let versions = runtime.block_on(machine::versions(&settings.workspace, &mongodb_uri()));
    eprintln!("[bench] creating the fixture");
    let fixture = runtime.block_on(Fixture::create(settings))?;
    let mut bench = Bench {
        settings,
        fixture: &fixture,
        runtime: &runtime,
        commands: Vec::new(),
    };
    let mut problems = Vec::new();
    // Cold starts first, while the services are quiet.
    let cold_starts = attempt(settings, &mut problems, "cold-start", || {
        bench.cold_starts()
    });
    let framework = attempt(settings, &mut problems, "framework", || bench.framework());
    let db_bound = attempt(settings, &mut problems, "status-apply", || bench.db_bound());
    let login = attempt(settings, &mut problems, "login", || bench.login());
    let pipeline = attempt(settings, &mut problems, "pipeline", || bench.pipeline());
    let memory = attempt(settings, &mut problems, "memory", || bench.memory());
    let artifacts = attempt(settings, &mut problems, "artifacts", || {
        Ok(bench.artifacts())
    });
    let scale = attempt(settings, &mut problems, "scale", || bench.scale());

    if std::env::var_os("BENCH_KEEP_DATA").is_none() {
        for space in fixture.spaces(settings.runs) {
            if let Err(err) = runtime.block_on(space.remove()) {
                eprintln!("[bench] could not remove {}: {err}", space.database);
            }
        }
    }

    let report = Report {
        settings,
        date: utc_now(),
        machine,
        cpu_busy: (
            busy_before.clone(),
            machine::percent_busy(machine::cpu_busy()),
        ),
        versions,
        commands: bench.commands,
        db_bound,
        login,
        framework,
        pipeline,
        cold_starts,
        memory,
        artifacts,
        release_profile: machine::release_profile(
            &std::fs::read_to_string(settings.workspace.join("Cargo.toml")).unwrap_or_default(),
        ),
        history: std::fs::read_to_string(settings.workspace.join("bench/HISTORY.md")).ok(),
        scale: std::fs::read_to_string(settings.workspace.join("bench/SCALE.md")).ok(),
        problems,
    };
    // The scale section lives between markers, so a run of only that
    // scenario replaces it and leaves the rest of the report as it was.
    let date = report.date.clone();
    let rendered = if settings.only.iter().all(|name| name == "scale") && !settings.only.is_empty()
    {
        std::fs::read_to_string(&settings.output).unwrap_or_default()
    } else {
        report.render()
    };
    let rendered = match &scale {
        Some(scale) => scale::splice(&rendered, &scale::render(scale, &date, &busy_before)),
        None => rendered,
    };
    std::fs::write(&settings.output, rendered)?;
    eprintln!("[bench] wrote {}", settings.output.display());
    Ok(report.problems.is_empty())
}

/// Runs `scenario` when the settings select it; a failure is reported and
/// recorded in `problems`, and the other scenarios still run.
fn attempt<T>(
    settings: &Settings,
    problems: &mut Vec<String>,
    name: &str,
    scenario: impl FnOnce() -> Result<T>,
) -> Option<T> {
    if !settings.runs_scenario(name) {
        return None;
    }
    eprintln!("[bench] == {name}");
    scenario()
        .inspect_err(|err| {
            eprintln!("[bench] {name} failed: {err}");
            problems.push(format!("{name}: {err}"));
        })
        .ok()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "an unknown date".into())
}
