//! `users`: accounts, their bcrypt hashes and roles.

use mongodb::bson::{Binary, Bson, Document, doc, oid::ObjectId, spec::BinarySubtype};
use serde::{Deserialize, Serialize};

use super::{Context as _, Store, StoreError, is_duplicate_key};
use crate::auth::Role;

/// A document of `users`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

impl Store {
    pub async fn find_user(&self, username: &str) -> Result<Option<UserDoc>, StoreError> {
        self.users
            .find_one(doc! { "username": username })
            .max_time(self.read_limit)
            .await
            .context("find user")
    }

    /// Whether a user named `username` exists: one lookup on the unique
    /// `username` index that reads no password.
    pub async fn user_exists(&self, username: &str) -> Result<bool, StoreError> {
        let found = self
            .users
            .clone_with_type::<Document>()
            .find_one(doc! { "username": username })
            .max_time(self.read_limit)
            .projection(doc! { "_id": 1 })
            .await
            .context("find user")?;
        Ok(found.is_some())
    }

    /// The password hash of the most recently created user, if any: the cost
    /// the stored hashes have.
    pub async fn newest_password_hash(&self) -> Result<Option<String>, StoreError> {
        let newest = self
            .users
            .find_one(doc! { "password": { "$exists": true } })
            .max_time(self.read_limit)
            .sort(doc! { "_id": -1 })
            .await
            .context("find newest password hash")?;
        Ok(newest.and_then(|user| user.password_hash()))
    }

    /// Replaces `username`'s password hash, only if it is still `old_hash`
    /// (a concurrent change of password wins).
    pub async fn replace_password_hash(
        &self,
        username: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<(), StoreError> {
        let old = UserDoc::new(username, old_hash, Role::User).password;
        let new = UserDoc::new(username, new_hash, Role::User).password;
        let stored_as_text = Bson::String(old_hash.to_owned());
        self.users
            .update_one(
                doc! { "username": username, "password": { "$in": [old, stored_as_text] } },
                doc! { "$set": { "password": new } },
            )
            .await
            .context("replace password hash")?;
        Ok(())
    }

    /// Inserts a user; the unique index on `username` decides races.
    pub async fn insert_user(&self, user: &UserDoc) -> Result<(), InsertUserError> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate_key(&err) => Err(InsertUserError::Taken),
            Err(err) => Err(StoreError::new("insert user", err).into()),
        }
    }

    /// Creates or promotes `username` to an admin with the given bcrypt hash.
    pub async fn upsert_admin(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let stored = UserDoc::new(username, password_hash, Role::Admin);
        self.users
            .update_one(
                doc! { "username": username },
                doc! { "$set": { "password": stored.password, "role": Role::Admin.as_str() } },
            )
            .upsert(true)
            .await
            .context("upsert admin")?;
        Ok(())
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
