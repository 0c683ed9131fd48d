//! `finapp-admin`: operator commands, configured like the functions (a `.env`
//! file, the environment, `FINAPP_SECRET_ID`). `finapp-admin --help` lists
//! the commands, `finapp-admin COMMAND --help` describes one.

use std::{
    io::{BufRead as _, IsTerminal as _},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use finapp_admin::doctor::Severity;
use finapp_shared::{
    auth::Passwords,
    config::Config,
    store::{Store, ThrottleKey},
};
use secrecy::{ExposeSecret as _, SecretString};

/// Operator commands for the FinApp functions' database and broker.
///
/// Configured like the functions: a `.env` file in the working directory, under
/// the environment, under the Secrets Manager secret named by
/// `FINAPP_SECRET_ID`. No command signs or checks a token, so none needs
/// `JWT_SECRET_KEY`. Every command is idempotent.
#[derive(Debug, Parser)]
#[command(name = "finapp-admin", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates USERNAME as an admin, or promotes and re-keys an existing user.
    ///
    /// The password is asked for twice without echo when stdin is a terminal,
    /// otherwise read as the first line of stdin (`echo "$PASSWORD" |
    /// finapp-admin create-admin alice`). It is stored as a bcrypt hash
    /// (`BCRYPT_COST`). Uses MONGODB_*.
    CreateAdmin {
        /// The admin's username, under the same rules as /signup's.
        username: String,
    },
    /// Inserts whichever of the original's five financing options are missing.
    ///
    /// Uses MONGODB_*.
    SeedFinancingOptions,
    /// Reports what would stop or surprise the bundle in the database and the broker.
    ///
    /// Each finding is one line: BLOCKING (the functions refuse to serve the
    /// database as it is; the exit status is then 1), FIXABLE (`migrate` or
    /// `migrate-queues` fixes it) or NOTE. Changes nothing. Uses MONGODB_* and
    /// RABBITMQ_*.
    Doctor,
    /// Hashes plaintext passwords, builds the indexes, counts the stored events for analytics.
    ///
    /// Refuses, changing nothing, while duplicate usernames or selections remain
    /// (`doctor` lists them). Run it before the bundle's consumer starts. Uses
    /// MONGODB_* and BCRYPT_COST.
    Migrate,
    /// Moves the original's non-durable queues to durable ones, keeping every message.
    ///
    /// Acts on each queue of the deployment declared with other arguments than
    /// the bundle's. No message is lost: each is moved to a holding queue and back, acknowledged
    /// only once the broker confirmed its copy. Stop the old publishers first.
    /// Uses RABBITMQ_* only.
    MigrateQueues,
    /// Rebuilds the analytics counters from every stored event.
    ///
    /// Stop the analytics consumer first: an event recorded meanwhile may be
    /// counted twice or not at all. Uses MONGODB_*.
    RebuildAnalytics,
    /// Ends USERNAME's failed-login window now, so that /login stops answering 429.
    ///
    /// The per-address windows are left alone. Uses MONGODB_*.
    Unlock {
        /// The username whose failures are forgotten.
        username: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("finapp-admin: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<String, String> {
    // No command signs or checks a token: JWT_SECRET_KEY is neither needed nor read.
    let config =
        finapp_shared::load_config_with(|lookup| Config::from_lookup_without_tokens(lookup))
            .await?;
    if let Command::MigrateQueues = command {
        return migrate_queues(&config).await;
    }
    // Read before connecting, so that a mistyped password costs no round trip.
    let password = match &command {
        Command::CreateAdmin { username } => Some(read_password(username)?),
        _ => None,
    };
    let store = Store::connect(&config)
        .await
        .map_err(|err| err.to_string())?;
    let passwords = Passwords::new(config.bcrypt_cost);
    match command {
        Command::Doctor => {
            let findings = finapp_admin::doctor::doctor(&store, &config)
                .await
                .map_err(|err| err.to_string())?;
            let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
            if findings.iter().any(|f| f.severity == Severity::Blocking) {
                return Err(format!(
                    "database {} cannot be served as it is:\n{}",
                    config.mongodb_database,
                    report.join("\n")
                ));
            }
            Ok(if report.is_empty() {
                format!("database {}: nothing to report", config.mongodb_database)
            } else {
                report.join("\n")
            })
        }
        Command::Migrate => {
            let migrated = finapp_admin::doctor::migrate(&store, &passwords)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!(
                "migrated database {}: {} plaintext passwords hashed, indexes built, \
                 analytics counted from {} stored events",
                config.mongodb_database, migrated.passwords_hashed, migrated.events_counted
            ))
        }
        Command::Unlock { username } => {
            store
                .clear_login_failures(ThrottleKey::User(&username))
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("{username} may log in again"))
        }
        Command::RebuildAnalytics => {
            let summary = store
                .rebuild_analytics_counters()
                .await
                .map_err(|err| format!("{err}: {:?}", std::error::Error::source(&err)))?;
            Ok(format!(
                "analytics counters rebuilt from {} events",
                summary.total_events
            ))
        }
        Command::CreateAdmin { username } => {
            store
                .ensure_indexes()
                .await
                .map_err(|err| err.to_string())?;
            let password = password.expect("read above for create-admin");
            finapp_admin::create_admin(&store, &passwords, &username, password)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("{username} is an admin"))
        }
        Command::SeedFinancingOptions => {
            store
                .ensure_indexes()
                .await
                .map_err(|err| err.to_string())?;
            let inserted = finapp_admin::seed_financing_options(&store)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("financing options seeded ({inserted} new)"))
        }
        Command::MigrateQueues => unreachable!("answered above"),
    }
}

async fn migrate_queues(config: &Config) -> Result<String, String> {
    let moved = finapp_admin::queues::migrate_queues(config)
        .await
        .map_err(|err| format!("broker: {err}"))?;
    let lines: Vec<String> = moved
        .iter()
        .map(|queue| {
            format!(
                "{}: now durable, {} messages kept",
                queue.queue, queue.messages
            )
        })
        .collect();
    Ok(if lines.is_empty() {
        "every queue already has the bundle's definition".into()
    } else {
        lines.join("\n")
    })
}

/// The new admin's password: asked for twice without echo when stdin is a
/// terminal, else the first line of stdin (for scripts).
fn read_password(username: &str) -> Result<SecretString, String> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|err| format!("cannot read the password from stdin: {err}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned().into());
    }
    // The terminal we were handed on stdin (not /dev/tty, which a process
    // started without a controlling terminal lacks); prompts go to stderr so
    // that stdout carries only the result.
    let ask = |prompt: String| {
        let config = rpassword::ConfigBuilder::new()
            .input_file_path("/dev/stdin")
            .output_writer(std::io::stderr())
            .build();
        rpassword::prompt_password_with_config(prompt, config)
            .map(SecretString::from)
            .map_err(|err| format!("cannot read the password from the terminal: {err}"))
    };
    let password = ask(format!("Password for {username}: "))?;
    let again = ask("Same password again: ".to_owned())?;
    if password.expose_secret() != again.expose_secret() {
        return Err("the two passwords differ; nothing was changed".into());
    }
    Ok(password)
}
