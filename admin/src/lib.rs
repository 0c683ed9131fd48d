//! The operator commands behind the `finapp-admin` binary. Each is idempotent.

pub mod doctor;
pub mod queues;

use finapp_shared::{
    auth::{PasswordError, Passwords},
    domain::{NewPassword, Username},
    store::{Store, StoreError},
};
use mongodb::bson::{Document, doc};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Creates `username` as an admin, or promotes and re-keys an existing user.
/// The password is stored as a bcrypt hash, never as given.
pub async fn create_admin(
    store: &Store,
    passwords: &Passwords,
    username: &str,
    password: SecretString,
) -> Result<(), AdminError> {
    let username = Username::parse(username).map_err(AdminError::Invalid)?;
    let password = NewPassword::parse(password).map_err(AdminError::Invalid)?;
    let hash = passwords.hash(password.into_secret()).await?;
    store.upsert_admin(username.as_str(), &hash).await?;
    Ok(())
}

/// Inserts whichever of the original's five financing options are missing;
/// returns how many were inserted.
pub async fn seed_financing_options(store: &Store) -> Result<u64, AdminError> {
    Ok(store
        .seed_financing_options(original_financing_options())
        .await?)
}

/// The five options the original seeded, with its rates, durations and criteria.
pub fn original_financing_options() -> Vec<Document> {
    let option = |name: &str,
                  rate: f64,
                  months: i32,
                  max: i32,
                  description: &str,
                  income: i32,
                  score: i32| {
        doc! {
            "option_name": name,
            "interest_rate": rate,
            "duration_months": months,
            "max_amount": max,
            "description": description,
            "eligibility_criteria": { "min_income": income, "credit_score": score },
        }
    };
    vec![
        option(
            "Home Loans",
            2.8,
            240,
            1_000_000,
            "Get the best deals on home loans with low-interest rates.",
            60_000,
            720,
        ),
        option(
            "Car Loans",
            3.5,
            60,
            50_000,
            "Drive your dream car with affordable car loans.",
            40_000,
            650,
        ),
        option(
            "Education Loans",
            3.0,
            120,
            80_000,
            "Secure your future with low-interest education loans.",
            30_000,
            600,
        ),
        option(
            "Personal Loans",
            5.0,
            36,
            30_000,
            "Personal loans for all your needs with flexible options.",
            25_000,
            620,
        ),
        option(
            "Business Loans",
            4.5,
            72,
            100_000,
            "Get financing options to grow your business.",
            100_000,
            700,
        ),
    ]
}
