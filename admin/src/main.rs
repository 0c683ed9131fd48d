//! `finapp-admin`: operator commands, configured like the functions (a `.env`
//! file, the environment, `FINAPP_SECRET_ID`).
//!
//! ```text
//! finapp-admin create-admin <username>     # password read from stdin
//! finapp-admin seed-financing-options
//! finapp-admin doctor                      # what would stop or surprise the bundle
//! finapp-admin migrate                     # hash plaintext passwords, build the indexes
//! finapp-admin migrate-queues              # the original's queues -> durable ones
//! finapp-admin rebuild-analytics           # counters from every stored event (consumer stopped)
//! finapp-admin unlock <username>           # end the name's failed-login window now
//! ```

use std::{io::BufRead as _, process::ExitCode};

use finapp_admin::doctor::Severity;
use finapp_shared::{
    auth::Passwords,
    store::{Store, ThrottleKey},
};

const USAGE: &str = "usage: finapp-admin create-admin <username>   (password on stdin)
       finapp-admin seed-financing-options
       finapp-admin doctor
       finapp-admin migrate
       finapp-admin migrate-queues
       finapp-admin rebuild-analytics
       finapp-admin unlock <username>";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
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

async fn run(args: &[String]) -> Result<String, String> {
    let command: Vec<&str> = args.iter().map(String::as_str).collect();
    if !matches!(
        command.as_slice(),
        ["create-admin" | "unlock", _]
            | ["seed-financing-options"
                | "doctor"
                | "migrate"
                | "migrate-queues"
                | "rebuild-analytics"]
    ) {
        return Err(USAGE.into());
    }
    let config = finapp_shared::load_config().await?;
    let store = Store::connect(&config)
        .await
        .map_err(|err| err.to_string())?;
    let passwords = Passwords::new(config.bcrypt_cost);
    match command.as_slice() {
        ["doctor"] => {
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
        ["migrate"] => {
            let migrated = finapp_admin::doctor::migrate(&store, &passwords)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!(
                "migrated database {}: {} plaintext passwords hashed, indexes built, \
                 analytics counted from {} stored events",
                config.mongodb_database, migrated.passwords_hashed, migrated.events_counted
            ))
        }
        ["migrate-queues"] => {
            let moved = finapp_admin::queues::migrate_queues(&config)
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
        ["unlock", username] => {
            store
                .clear_login_failures(ThrottleKey::User(username))
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("{username} may log in again"))
        }
        ["rebuild-analytics"] => {
            let summary = store
                .rebuild_analytics_counters()
                .await
                .map_err(|err| format!("{err}: {:?}", std::error::Error::source(&err)))?;
            Ok(format!(
                "analytics counters rebuilt from {} events",
                summary.total_events
            ))
        }
        _ => {
            store
                .ensure_indexes()
                .await
                .map_err(|err| err.to_string())?;
            if let ["create-admin", username] = command.as_slice() {
                let mut password = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut password)
                    .map_err(|err| err.to_string())?;
                let password = password.trim_end_matches(['\r', '\n']).to_owned();
                finapp_admin::create_admin(&store, &passwords, username, password.into())
                    .await
                    .map_err(|err| err.to_string())?;
                return Ok(format!("{username} is an admin"));
            }
            let inserted = finapp_admin::seed_financing_options(&store)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("financing options seeded ({inserted} new)"))
        }
    }
}
