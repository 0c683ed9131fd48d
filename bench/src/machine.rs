//! What the numbers were measured on: the machine and the exact versions of
//! every moving part.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use mongodb::bson::doc;

/// Crates whose resolved versions the report names.
const CRATES: [&str; 8] = [
    "mongodb",
    "lapin",
    "axum",
    "hyper",
    "tokio",
    "bcrypt",
    "tracing-subscriber",
    "lambda_http",
];

#[derive(Clone, Debug)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
}

impl Machine {
    pub fn describe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| {
                    line.split_once(':')
                        .map(|(_, value)| value.trim().to_owned())
                })
                .unwrap_or_else(|| "unknown".into())
        };
        let os = read("/etc/os-release")
            .lines()
            .find_map(|line| line.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: cores(),
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            memory: field(&read("/proc/meminfo"), "MemTotal"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os,
        }
    }
}

/// How busy the CPUs are over the next second (0 to 1), from `/proc/stat`:
/// another build running next to the benchmark shows here, and every figure
/// of the run would suffer from it.
pub fn cpu_busy() -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4)?;
        Some((total, idle))
    };
    let (total0, idle0) = sample()?;
    std::thread::sleep(Duration::from_secs(1));
    let (total1, idle1) = sample()?;
    (total1 > total0).then(|| 1.0 - (idle1 - idle0) as f64 / (total1 - total0) as f64)
}

/// Waits until the CPUs are less than `threshold` busy, for at most `limit`;
/// returns the last measurement.
pub fn wait_until_quiet(threshold: f64, limit: Duration) -> Option<f64> {
    let deadline = Instant::now() + limit;
    loop {
        let busy = cpu_busy();
        if busy.is_none_or(|busy| busy < threshold) || Instant::now() >= deadline {
            return busy;
        }
        eprintln!(
            "[bench] CPUs {:.0}% busy with something else; waiting for them to quiet down",
            busy.unwrap_or_default() * 100.0
        );
    }
}

/// A `cpu_busy` measurement for the report.
pub fn percent_busy(busy: Option<f64>) -> String {
    busy.map_or_else(|| "unknown".into(), |busy| format!("{:.0}%", busy * 100.0))
}

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `(component, version)` pairs, for the report.
pub async fn versions(workspace: &Path, mongodb_uri: &str) -> Vec<(String, String)> {
    let mut versions = vec![
        ("rustc".to_owned(), first_line("rustc", &["-V"])),
        ("cargo".to_owned(), first_line("cargo", &["-V"])),
        (
            "wrk".to_owned(),
            first_line("wrk", &["-v"])
                .split(" Copyright")
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        (
            "FerretDB".to_owned(),
            ferretdb_version(workspace, mongodb_uri).await,
        ),
        (
            "RabbitMQ".to_owned(),
            first_line("dpkg-query", &["-W", "-f", "${Version}", "rabbitmq-server"]),
        ),
        (
            "Erlang (erlang-base)".to_owned(),
            first_line("dpkg-query", &["-W", "-f", "${Version}", "erlang-base"]),
        ),
        (
            "cargo-lambda".to_owned(),
            first_line("cargo", &["lambda", "--version"]),
        ),
    ];
    let lock = std::fs::read_to_string(workspace.join("Cargo.lock")).unwrap_or_default();
    for name in CRATES {
        versions.push((format!("crate `{name}`"), locked_version(&lock, name)));
    }
    versions
}

/// The `[profile.release*]` sections of a `Cargo.toml`, without comments.
pub fn release_profile(cargo_toml: &str) -> String {
    let mut inside = false;
    let mut profile = String::new();
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line.starts_with("[profile.release");
            if inside && !profile.is_empty() {
                profile.push('\n');
            }
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            profile.push_str(line);
            profile.push('\n');
        }
    }
    profile
}

/// The first line a command prints (on stdout or, as `wrk -v` does, stderr).
fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(output) => {
            let text = if output.stdout.is_empty() {
                output.stderr
            } else {
                output.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("unknown")
                .trim()
                .to_owned()
        }
        Err(err) => format!("unavailable ({err})"),
    }
}

/// FerretDB's module version (tools/ferretdb/go.mod pins it; the embedded
/// build cannot report its own) and the MongoDB version it claims in `buildInfo`.
async fn ferretdb_version(workspace: &Path, uri: &str) -> String {
    let go_mod =
        std::fs::read_to_string(workspace.join("tools/ferretdb/go.mod")).unwrap_or_default();
    let module = go_mod
        .lines()
        .find_map(|line| {
            line.split_once("github.com/FerretDB/FerretDB ")
                .map(|(_, rest)| rest)
        })
        .map_or("unknown", |version| {
            version.split_whitespace().next().unwrap_or("unknown")
        })
        .to_owned();
    let answer = async {
        let client = mongodb::Client::with_uri_str(uri).await?;
        client
            .database("admin")
            .run_command(doc! { "buildInfo": 1 })
            .await
    };
    let claims = match answer.await {
        Ok(info) => info.get_str("version").unwrap_or("unknown").to_owned(),
        Err(err) => format!("unavailable: {err}"),
    };
    let backend = std::env::var("FINAPP_FERRETDB_BACKEND").unwrap_or_else(|_| "postgresql".into());
    let postgres = first_line("dpkg-query", &["-W", "-f", "${Version}", "postgresql"]);
    let backend = if backend == "sqlite" {
        "SQLite backend".to_owned()
    } else {
        format!("PostgreSQL backend, Debian postgresql {postgres}")
    };
    format!("{module} ({backend}; `buildInfo` reports MongoDB {claims})")
}

/// The version of `name` in a Cargo.lock's text.
fn locked_version(lock: &str, name: &str) -> String {
    let entry = format!("name = \"{name}\"\nversion = \"");
    lock.split_once(&entry)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(
            || "not in Cargo.lock".into(),
            |(version, _)| version.to_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_profile_sections_are_kept_without_comments() {
        let toml = "[profile.release]\n# why\nopt-level = \"s\"\n\n\
                    [profile.release.package.blowfish]\nopt-level = 3\n\n[profile.dev]\ndebug = 1\n";
        assert_eq!(
            release_profile(toml),
            "[profile.release]\nopt-level = \"s\"\n\n[profile.release.package.blowfish]\nopt-level = 3\n"
        );
    }

    #[test]
    fn a_locked_version_is_read_from_its_entry() {
        let lock = "[[package]]\nname = \"axum\"\nversion = \"0.8.9\"\n";
        assert_eq!(locked_version(lock, "axum"), "0.8.9");
        assert_eq!(locked_version(lock, "hyper"), "not in Cargo.lock");
    }
}
