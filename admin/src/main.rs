//! `finapp-admin`: operator commands, configured by the same environment as the functions.
//!
//! ```text
//! finapp-admin create-admin <username>     # password read from stdin
//! finapp-admin seed-financing-options
//! ```

use std::{io::BufRead as _, process::ExitCode};

use finapp_shared::{auth::Passwords, config::Config, store::Store};

const USAGE: &str = "usage: finapp-admin create-admin <username>   (password on stdin)\n       finapp-admin seed-financing-options";

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
        ["create-admin", _] | ["seed-financing-options"]
    ) {
        return Err(USAGE.into());
    }
    let config = Config::from_env().map_err(|err| err.to_string())?;
    let store = Store::connect(&config)
        .await
        .map_err(|err| err.to_string())?;
    store
        .ensure_indexes()
        .await
        .map_err(|err| format!("{err}: {:?}", std::error::Error::source(&err)))?;
    match command.as_slice() {
        ["create-admin", username] => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .map_err(|err| err.to_string())?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            let passwords = Passwords::new(config.bcrypt_cost);
            finapp_admin::create_admin(&store, &passwords, username, password.into())
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("{username} is an admin"))
        }
        _ => {
            let inserted = finapp_admin::seed_financing_options(&store)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!("financing options seeded ({inserted} new)"))
        }
    }
}
