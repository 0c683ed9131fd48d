//! Failed logins, counted per key in fixed windows that open at a key's first
//! failure and close `LOGIN_FAILURE_WINDOW_SECS` later.
//!
//! The windows live in MongoDB (`login_failures`), so every process and Lambda
//! instance shares them. A window's `expires_at` carries a TTL index where the
//! server has them; FerretDB 1.x does not, so a window past its end is also
//! ignored on every read and purged on the next failure anywhere.

use std::{net::IpAddr, time::Duration};

use futures_util::TryStreamExt as _;
use mongodb::bson::{DateTime, doc};
use serde::{Deserialize, Serialize};

use super::{Context as _, Store, StoreError, upsert};

/// What a failure is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleKey<'a> {
    /// The username tried, whether or not such a user exists.
    User(&'a str),
    /// The client's address.
    Address(IpAddr),
}

impl ThrottleKey<'_> {
    fn id(self) -> String {
        match self {
            Self::User(name) => format!("user:{name}"),
            Self::Address(ip) => format!("addr:{ip}"),
        }
    }
}

/// One key's open window.
#[derive(Debug, Serialize, Deserialize)]
pub struct FailureWindow {
    #[serde(rename = "_id")]
    pub key: String,
    pub failures: i64,
    pub expires_at: DateTime,
}

impl Store {
    /// How long the longest of `keys`' windows that has reached its limit
    /// still has to run; `None` when no key is at its limit.
    pub async fn login_blocked_for(
        &self,
        keys: &[(ThrottleKey<'_>, u32)],
    ) -> Result<Option<Duration>, StoreError> {
        let now = DateTime::now();
        let ids: Vec<String> = keys.iter().map(|(key, _)| key.id()).collect();
        let windows: Vec<FailureWindow> = self
            .login_failures
            .find(doc! { "_id": { "$in": &ids }, "expires_at": { "$gt": now } })
            .max_time(self.read_limit)
            .await
            .context("find login failures")?
            .try_collect()
            .await
            .context("find login failures")?;
        Ok(windows
            .iter()
            .filter(|window| {
                ids.iter().zip(keys).any(|(id, (_, limit))| {
                    *id == window.key && window.failures >= i64::from(*limit)
                })
            })
            .map(|window| {
                let left = window.expires_at.timestamp_millis() - now.timestamp_millis();
                Duration::from_millis(u64::try_from(left).unwrap_or(0))
            })
            .max())
    }

    /// Counts one failure against each key, opening a window of `window` for
    /// a key without an open one, and purges every window that has ended.
    pub async fn record_login_failure(
        &self,
        keys: &[ThrottleKey<'_>],
        window: Duration,
    ) -> Result<(), StoreError> {
        let now = DateTime::now();
        self.login_failures
            .delete_many(doc! { "expires_at": { "$lte": now } })
            .await
            .context("record login failure")?;
        let millis = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let ends = DateTime::from_millis(now.timestamp_millis().saturating_add(millis));
        for key in keys {
            let update = doc! {
                "$inc": { "failures": 1_i64 },
                "$setOnInsert": { "expires_at": ends },
            };
            upsert(
                "record login failure",
                &self.login_failures,
                doc! { "_id": key.id() },
                update,
            )
            .await?;
        }
        Ok(())
    }

    /// Closes `key`'s window: a successful login resets its username's count.
    pub async fn clear_login_failures(&self, key: ThrottleKey<'_>) -> Result<(), StoreError> {
        self.login_failures
            .delete_one(doc! { "_id": key.id() })
            .await
            .context("clear login failures")?;
        Ok(())
    }
}
