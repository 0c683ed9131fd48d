//! `financing_options`: the catalogue, read whole and cached per process.
//! (A user's one selection, in `user_financing_selections`, is written as an
//! effect of its event: `store::effects`.)

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};

use super::{Context as _, Store, StoreError, to_json};

/// How long a process serves the financing options from memory: they change
/// only when an operator seeds them.
pub const FINANCING_OPTIONS_TTL: Duration = Duration::from_secs(5);

/// The options last read, and when: shared by a process's clones of [`Store`].
pub(super) type OptionsCache = Arc<Mutex<Option<(Instant, Vec<serde_json::Value>)>>>;

impl Store {
    /// Every financing option as [`Store::financing_options`] reads them, served
    /// from this process's memory for [`FINANCING_OPTIONS_TTL`] after each read.
    pub async fn financing_options_cached(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        if let Some((at, options)) = self.options_cache.lock().unwrap().as_ref()
            && at.elapsed() < FINANCING_OPTIONS_TTL
        {
            return Ok(options.clone());
        }
        let options = self.financing_options().await?;
        *self.options_cache.lock().unwrap() = Some((Instant::now(), options.clone()));
        Ok(options)
    }

    /// Every financing option, in insertion order, as JSON.
    pub async fn financing_options(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let cursor = self
            .financing_options
            .find(doc! {})
            .max_time(self.read_limit)
            .sort(doc! { "_id": 1 })
            .await
            .context("find financing options")?;
        cursor
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await
            .context("find financing options")
    }

    pub async fn find_option(&self, id: ObjectId) -> Result<Option<Document>, StoreError> {
        self.financing_options
            .find_one(doc! { "_id": id })
            .max_time(self.read_limit)
            .await
            .context("find financing option")
    }

    /// Inserts each option whose `option_name` is not stored yet; returns how many were new.
    pub async fn seed_financing_options(&self, options: Vec<Document>) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for option in options {
            let name = option.get_str("option_name").unwrap_or_default().to_owned();
            let result = self
                .financing_options
                .update_one(
                    doc! { "option_name": name },
                    doc! { "$setOnInsert": option },
                )
                .upsert(true)
                .await
                .context("seed financing option")?;
            inserted += u64::from(result.upserted_id.is_some());
        }
        Ok(inserted)
    }
}
