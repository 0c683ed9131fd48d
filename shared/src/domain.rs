//! Validated domain types: a value of these types has passed its rules, so code
//! that holds one never re-checks it. Each has a `parse` constructor whose error
//! text is safe to show the client.

use secrecy::{ExposeSecret, SecretString};

/// A user name: 3 to 64 characters from `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(format!(
                "username must be {} to {} characters",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err("username may contain only letters, digits, '_', '.' and '-'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A new password: 8 to 72 bytes, the most bcrypt actually hashes.
#[derive(Debug)]
pub struct NewPassword(SecretString);

impl NewPassword {
    pub const MIN_BYTES: usize = 8;
    pub const MAX_BYTES: usize = 72;

    pub fn parse(raw: SecretString) -> Result<Self, String> {
        let len = raw.expose_secret().len();
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&len) {
            return Err(format!(
                "password must be {} to {} bytes",
                Self::MIN_BYTES,
                Self::MAX_BYTES
            ));
        }
        Ok(Self(raw))
    }

    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

/// Refuses text holding a NUL character. No name or purpose has one, and
/// FerretDB on PostgreSQL cannot store or even query one (PostgreSQL text
/// has no NUL), so it is refused as input rather than failing in the database.
pub fn no_nul(field: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        Err(format!("{field} must not contain NUL characters"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_within_the_rules_are_accepted() {
        for name in ["abc", "john_doe", "a.b-c_9", &"x".repeat(64)] {
            assert_eq!(Username::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn usernames_breaking_the_rules_are_refused() {
        for name in [
            "",
            "ab",
            &"x".repeat(65),
            "john doe",
            "jöhn",
            "emoji😀",
            "a/b",
            "a$b",
        ] {
            assert!(Username::parse(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn passwords_are_measured_in_bytes_not_characters() {
        assert!(NewPassword::parse("x".repeat(72).into()).is_ok());
        assert!(NewPassword::parse("x".repeat(73).into()).is_err());
        // 36 two-byte characters are 72 bytes; 37 are 74.
        assert!(NewPassword::parse("é".repeat(36).into()).is_ok());
        assert!(NewPassword::parse("é".repeat(37).into()).is_err());
        assert!(NewPassword::parse("short".to_string().into()).is_err());
    }
}
