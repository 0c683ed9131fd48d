//! `doctor` and `migrate`: what in a database (and its broker) written by the
//! original Python services would stop or surprise the bundle, and the fixes
//! that need no human.

use finapp_broker::topology::{connect_broker, probe_queue, queue_names};
use finapp_shared::{
    auth::Passwords,
    config::Config,
    store::{Context as _, Store, StoreError, collections, list_counts},
};
use futures_util::TryStreamExt as _;
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};

use crate::AdminError;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The functions refuse to start, or serve the wrong data, until it is fixed.
    Blocking,
    /// `migrate` fixes it.
    Fixable,
    /// The bundle copes; worth knowing.
    Note,
}

/// One thing found, with how many documents (or queues) it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub count: u64,
    pub what: String,
    pub action: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.severity {
            Severity::Blocking => "BLOCKING",
            Severity::Fixable => "FIXABLE ",
            Severity::Note => "NOTE    ",
        };
        write!(f, "{label} {}: {}; {}", self.count, self.what, self.action)
    }
}

/// Everything `doctor` checks, in the order it prints them.
pub async fn doctor(store: &Store, config: &Config) -> Result<Vec<Finding>, AdminError> {
    let mut findings = Vec::new();
    let mut found = |severity, count: u64, what: String, action| {
        if count > 0 {
            findings.push(Finding {
                severity,
                count,
                what,
                action,
            });
        }
    };

    if let Some((database, users)) = store.data_elsewhere().await {
        found(
            Severity::Blocking,
            users,
            format!(
                "users in database {database} (the original's) and none in {}",
                store.database().name()
            ),
            "set MONGODB_DATABASE=root to serve the original's data",
        );
    }
    for (collection, field, plural) in [
        ("users", "username", "usernames"),
        ("user_financing_selections", "user", "users"),
    ] {
        let duplicates = store.duplicates(collection, field).await?;
        found(
            Severity::Blocking,
            duplicates.len() as u64,
            format!(
                "duplicate {plural} in {collection}: {}",
                list_counts(&duplicates)
            ),
            "resolve by hand (rename or delete), then run finapp-admin migrate",
        );
    }
    let plaintext = plaintext_passwords(store).await?;
    found(
        Severity::Fixable,
        plaintext.len() as u64,
        format!("plaintext passwords in users: {}", plaintext.join(", ")),
        "finapp-admin migrate stores them as bcrypt hashes",
    );
    let users = store.database().collection::<Document>(collections::USERS);
    let applications = store
        .database()
        .collection::<Document>(collections::APPLICATIONS);
    found(
        Severity::Note,
        users
            .count_documents(doc! { "role": { "$exists": false } })
            .await
            .context("count users without role")?,
        "users without role".into(),
        "they are plain users, as in the original",
    );
    found(
        Severity::Note,
        applications
            .count_documents(doc! { "submitted_at": { "$exists": false } })
            .await
            .context("count undated applications")?,
        "applications without submitted_at".into(),
        "shown without it, listed after dated ones",
    );
    let integer_amount = doc! { "$or": [
        { "amount": { "$type": "int" } },
        { "amount": { "$type": "long" } },
    ] };
    found(
        Severity::Note,
        applications
            .count_documents(integer_amount)
            .await
            .context("count integer amounts")?,
        "applications with an integer amount".into(),
        "shown as stored",
    );
    match inequivalent_queues(config).await {
        Ok(queues) => found(
            Severity::Fixable,
            queues.len() as u64,
            format!(
                "queues declared with other arguments (the original's are not durable): {}",
                queues.join("; ")
            ),
            "used as they are; stop the old publishers, then run finapp-admin migrate-queues",
        ),
        Err(err) => found(
            Severity::Note,
            1,
            format!("broker not checked: {err}"),
            "check RABBITMQ_URI",
        ),
    }
    Ok(findings)
}

/// Usernames whose stored password is not a bcrypt hash.
async fn plaintext_passwords(store: &Store) -> Result<Vec<String>, StoreError> {
    let users: Vec<Document> = store
        .database()
        .collection::<Document>(collections::USERS)
        .find(doc! {})
        .projection(doc! { "username": 1, "password": 1 })
        .await
        .context("read passwords")?
        .try_collect()
        .await
        .context("read passwords")?;
    Ok(users
        .iter()
        .filter(|user| stored_text(user.get("password")).is_some_and(|text| !is_bcrypt(&text)))
        .map(|user| user.get_str("username").unwrap_or("?").to_owned())
        .collect())
}

/// A stored password as text: a string, or the bytes of a BSON binary.
fn stored_text(password: Option<&Bson>) -> Option<String> {
    match password? {
        Bson::String(text) => Some(text.clone()),
        Bson::Binary(binary) => Some(String::from_utf8_lossy(&binary.bytes).into_owned()),
        _ => None,
    }
}

/// Whether `text` has the shape of a bcrypt hash: `$2?$NN$` and 53 more characters.
fn is_bcrypt(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 60
        && text.starts_with("$2")
        && matches!(bytes[2], b'a' | b'b' | b'x' | b'y')
        && bytes[3] == b'$'
        && bytes[4..6].iter().all(u8::is_ascii_digit)
        && bytes[6] == b'$'
}

/// Each queue of the deployment that exists with arguments other than ours,
/// with the broker's words for the difference.
pub async fn inequivalent_queues(config: &Config) -> Result<Vec<String>, lapin::Error> {
    let connection = connect_broker(&config.rabbitmq_uri, "finapp-admin").await?;
    let mut found = Vec::new();
    for name in queue_names(&config.queue_prefix) {
        if let Some(difference) = probe_queue(&connection, &name, config.queue_type).await? {
            found.push(format!("{name} ({difference})"));
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(found)
}

/// What `migrate` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub passwords_hashed: u64,
    /// Events the analytics counters were seeded from.
    pub events_counted: u64,
}

/// Hashes plaintext passwords, builds the indexes, and seeds the analytics
/// counters from the events already stored (the original's count by its
/// substring rules). Refuses, changing nothing, while duplicate usernames or
/// selections remain. Run it before the bundle's consumer starts.
pub async fn migrate(store: &Store, passwords: &Passwords) -> Result<Migrated, AdminError> {
    for (collection, field, plural) in [
        ("users", "username", "usernames"),
        ("user_financing_selections", "user", "users"),
    ] {
        let duplicates = store.duplicates(collection, field).await?;
        if !duplicates.is_empty() {
            return Err(AdminError::Invalid(format!(
                "duplicate {plural} in {collection}: {}; resolve them by hand first (finapp-admin doctor lists them)",
                list_counts(&duplicates)
            )));
        }
    }
    let users = store.database().collection::<Document>(collections::USERS);
    let mut migrated = Migrated::default();
    let stored: Vec<Document> = users
        .find(doc! {})
        .projection(doc! { "_id": 1, "password": 1 })
        .await
        .context("read passwords")?
        .try_collect()
        .await
        .context("read passwords")?;
    for user in stored {
        let Some(old) = user.get("password") else {
            continue;
        };
        let Some(text) = stored_text(Some(old)).filter(|text| !is_bcrypt(text)) else {
            continue;
        };
        let hash = passwords.hash(text.into()).await?;
        let hash = Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: hash.into_bytes(),
        });
        // Only if the password is still the one read, so a concurrent change wins.
        let result = users
            .update_one(
                doc! { "_id": user.get("_id").cloned().unwrap_or(Bson::Null), "password": old.clone() },
                doc! { "$set": { "password": hash } },
            )
            .await
            .context("store migrated password")?;
        migrated.passwords_hashed += result.modified_count;
    }
    store
        .ensure_indexes()
        .await
        .map_err(|err| AdminError::Invalid(err.to_string()))?;
    migrated.events_counted = store.rebuild_analytics_counters().await?.total_events;
    Ok(migrated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_shaped_text_counts_as_a_hash() {
        let hash = bcrypt::hash("secure_password", 4).unwrap();
        assert!(is_bcrypt(&hash));
        for text in ["hashedpassword123", "", "$2b$04$short", &hash[..59]] {
            assert!(!is_bcrypt(text), "{text}");
        }
    }

    #[test]
    fn a_finding_reads_as_one_line_with_its_count() {
        let finding = Finding {
            severity: Severity::Blocking,
            count: 1,
            what: "duplicate usernames in users: alice (2)".into(),
            action: "resolve by hand",
        };
        assert_eq!(
            finding.to_string(),
            "BLOCKING 1: duplicate usernames in users: alice (2); resolve by hand"
        );
    }

    #[test]
    fn stored_passwords_read_as_text_in_either_form() {
        let binary = Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b"plain".to_vec(),
        });
        assert_eq!(stored_text(Some(&binary)).as_deref(), Some("plain"));
        assert_eq!(
            stored_text(Some(&Bson::String("plain".into()))).as_deref(),
            Some("plain")
        );
        assert_eq!(stored_text(Some(&Bson::Int32(1))), None);
    }
}
