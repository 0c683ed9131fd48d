//! MongoDB access: one client per process, one typed collection per collection,
//! indexes declared here and ensured at start-up.
//!
//! Documents written by the original Python services must always load, so every
//! field they might lack is optional and every field they wrote differently
//! (the password as BSON binary) is read in both forms.

use std::time::Duration;

use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{Binary, Bson, doc, oid::ObjectId, spec::BinarySubtype},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{auth::Role, config::Config};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// A database failure; always a 500 to the client, logged with its cause.
#[derive(Debug, thiserror::Error)]
#[error("database error")]
pub struct StoreError(#[from] mongodb::error::Error);

/// A document of `users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserDoc {
    #[serde(rename = "_id", skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    pub username: String,
    /// The bcrypt hash: BSON binary as the original wrote it (and as we write it,
    /// so the original services can still read our users), or a string.
    #[serde(default)]
    pub password: Option<Bson>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub role: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub email: Option<String>,
}

impl UserDoc {
    /// A new user with a bcrypt hash stored as BSON binary, like the original.
    pub fn new(username: &str, password_hash: &str, role: Role) -> Self {
        Self {
            id: None,
            username: username.to_owned(),
            password: Some(Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: password_hash.as_bytes().to_vec(),
            })),
            role: (role == Role::Admin).then(|| Role::Admin.as_str().to_owned()),
            email: None,
        }
    }

    /// The stored bcrypt hash as text, whichever form it was stored in.
    pub fn password_hash(&self) -> Option<String> {
        match self.password.as_ref()? {
            Bson::String(text) => Some(text.clone()),
            Bson::Binary(binary) => String::from_utf8(binary.bytes.clone()).ok(),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        Role::from_stored(self.role.as_deref())
    }
}

/// Reads an optional string field, treating any other stored type as absent, so
/// an odd legacy value degrades to the default instead of failing the request.
fn lenient_string<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Bson>::deserialize(de)? {
        Some(Bson::String(text)) => Some(text),
        _ => None,
    })
}

/// The outcome of inserting a user whose name may be taken.
#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("username is taken")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The database and its typed collections.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    pub users: Collection<UserDoc>,
}

impl Store {
    /// Builds the client (no I/O happens until the first operation).
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(config.mongodb_uri.expose_secret()).await?;
        options.app_name.get_or_insert_with(|| "finapp".into());
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        if let Some(size) = config.mongodb_max_pool_size {
            options.max_pool_size = Some(size);
        }
        let client = Client::with_options(options)?;
        Ok(Self::new(client.database(&config.mongodb_database)))
    }

    pub fn new(db: Database) -> Self {
        Self {
            users: db.collection("users"),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the indexes the code relies on; a no-op when they exist.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.users
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "username": 1 })
                    .options(unique)
                    .build(),
            )
            .await?;
        Ok(())
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<UserDoc>, StoreError> {
        Ok(self.users.find_one(doc! { "username": username }).await?)
    }

    /// Inserts a user; the unique index on `username` decides races.
    pub async fn insert_user(&self, user: &UserDoc) -> Result<(), InsertUserError> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate_key(&err) => Err(InsertUserError::Taken),
            Err(err) => Err(StoreError(err).into()),
        }
    }
}

/// Whether `err` is a unique-index violation.
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(failure) => failure
            .write_errors
            .iter()
            .flatten()
            .any(|write| write.code == DUPLICATE_KEY),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson;

    #[test]
    fn a_user_written_by_the_original_loads_with_its_binary_hash_and_no_role() {
        let original = doc! {
            "_id": ObjectId::new(),
            "username": "legacy",
            "password": Binary { subtype: BinarySubtype::Generic, bytes: b"$2b$12$abc".to_vec() },
        };
        let user: UserDoc = bson::from_document(original).unwrap();
        assert_eq!(user.password_hash().as_deref(), Some("$2b$12$abc"));
        assert_eq!(user.role(), Role::User);
    }

    #[test]
    fn a_password_stored_as_a_string_loads_too() {
        let user: UserDoc =
            bson::from_document(doc! { "username": "u", "password": "$2b$04$x", "role": "admin" })
                .unwrap();
        assert_eq!(user.password_hash().as_deref(), Some("$2b$04$x"));
        assert_eq!(user.role(), Role::Admin);
    }

    #[test]
    fn a_role_of_an_unexpected_type_means_a_plain_user() {
        let user: UserDoc =
            bson::from_document(doc! { "username": "u", "role": true, "email": 5 }).unwrap();
        assert_eq!(user.role(), Role::User);
        assert_eq!(user.email, None);
        assert_eq!(user.password_hash(), None);
    }

    #[test]
    fn a_new_user_is_stored_as_the_original_stored_it() {
        let stored = bson::to_document(&UserDoc::new("neo", "$2b$04$hash", Role::User)).unwrap();
        assert!(matches!(stored.get("password"), Some(Bson::Binary(_))));
        assert!(!stored.contains_key("role"));
        assert!(!stored.contains_key("_id"));
    }
}
