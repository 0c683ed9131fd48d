//! `applications`: finance applications, their status and audit trail.

use futures_util::TryStreamExt as _;
use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

use super::{Context as _, Store, StoreError, as_u64, to_json};
use crate::finance::{NewApplication, PageRequest, Status};

/// A document of `applications` as this bundle writes it. Reads go through
/// [`to_json`] instead, so applications the original wrote (no `submitted_at`,
/// an integer `amount`, no history) are shown as they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplicationDoc {
    pub loan_types: Vec<String>,
    pub amount: f64,
    pub purpose: String,
    pub status: String,
    pub submitted_by: String,
    pub submitted_at: DateTime,
    /// The audit trail: one entry per status the application has had.
    pub status_history: Vec<StatusChange>,
}

impl ApplicationDoc {
    /// `application` as submitted by `username` now, pending.
    pub fn pending(application: &NewApplication, username: &str) -> Self {
        let created = StatusChange::now(Status::Pending, username);
        Self {
            loan_types: application.loan_types.clone(),
            amount: application.amount,
            purpose: application.purpose.clone(),
            status: Status::Pending.as_str().to_owned(),
            submitted_by: username.to_owned(),
            submitted_at: created.at,
            status_history: vec![created],
        }
    }
}

/// One entry of an application's audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: String,
    pub by: String,
    pub at: DateTime,
}

impl StatusChange {
    pub fn now(status: Status, by: &str) -> Self {
        Self {
            status: status.as_str().to_owned(),
            by: by.to_owned(),
            at: DateTime::now(),
        }
    }
}

/// A user's applications counted by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub total_applications: u64,
    pub approved: u64,
    pub denied: u64,
    pub pending: u64,
}

/// A page of the admin listing.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplicationsPage {
    /// Applications as stored, `_id` as a hex string.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    pub total_pages: u64,
    pub current_page: u64,
    pub total_items: u64,
}

/// The result of an update addressed to several documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateCounts {
    pub matched_count: u64,
    pub modified_count: u64,
}

impl Store {
    /// Stores a new pending application by `username`; returns its id. (The
    /// apply function writes through [`Store::commit`] instead, with its event.)
    pub async fn insert_application(
        &self,
        application: &NewApplication,
        username: &str,
    ) -> Result<ObjectId, StoreError> {
        let inserted = self
            .applications
            .insert_one(ApplicationDoc::pending(application, username))
            .await
            .context("insert application")?;
        Ok(inserted.inserted_id.as_object_id().unwrap_or_default())
    }

    /// One page of `username`'s applications, newest first, as JSON, and
    /// whether older ones remain. The page is read from the
    /// (`submitted_by`, `submitted_at`) index; one document more than the
    /// page is asked for, to tell whether there is a next page.
    pub async fn applications_of(
        &self,
        username: &str,
        page: PageRequest,
    ) -> Result<(Vec<serde_json::Value>, bool), StoreError> {
        let mut applications: Vec<serde_json::Value> = self
            .applications
            .clone_with_type::<Document>()
            .find(doc! { "submitted_by": username })
            .max_time(self.read_limit)
            .sort(doc! { "submitted_at": -1, "_id": -1 })
            .skip(page.skip())
            .limit(i64::try_from(page.per_page + 1).unwrap_or(i64::MAX))
            .await
            .context("find applications")?
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await
            .context("find applications")?;
        let more = applications.len() as u64 > page.per_page;
        applications.truncate(usize::try_from(page.per_page).unwrap_or(usize::MAX));
        Ok((applications, more))
    }

    /// How many of `username`'s applications are pending, counting no
    /// further than `at_most`: the answer is `at_most` whenever there are that
    /// many or more. The count reads at most `at_most` index entries
    /// (MongoDB) or documents (FerretDB, which counts what it reads), so a
    /// user's backlog never makes the check dearer than the cap it enforces.
    pub async fn pending_count(&self, username: &str, at_most: u64) -> Result<u64, StoreError> {
        self.applications
            .count_documents(doc! { "submitted_by": username, "status": Status::Pending.as_str() })
            .limit(at_most)
            .max_time(self.read_limit)
            .await
            .context("count pending applications")
    }

    /// Counts `username`'s applications by status in the database.
    pub async fn status_counts(&self, username: &str) -> Result<StatusCounts, StoreError> {
        let pipeline = [
            doc! { "$match": { "submitted_by": username } },
            doc! { "$group": { "_id": "$status", "count": { "$sum": 1 } } },
        ];
        let mut groups = self
            .applications
            .aggregate(pipeline)
            .max_time(self.read_limit)
            .await
            .context("count applications by status")?;
        let mut counts = StatusCounts::default();
        while let Some(group) = groups
            .try_next()
            .await
            .context("count applications by status")?
        {
            let count = group.get("count").and_then(as_u64).unwrap_or(0);
            counts.total_applications += count;
            match group.get_str("_id") {
                Ok("approved") => counts.approved += count,
                Ok("denied") => counts.denied += count,
                Ok("pending") => counts.pending += count,
                _ => {}
            }
        }
        Ok(counts)
    }
    /// Sets the status of every application of `username`, recording `by` in each audit trail.
    pub async fn decide_for_user(
        &self,
        username: &str,
        status: Status,
        by: &str,
    ) -> Result<UpdateCounts, StoreError> {
        let result = self
            .applications
            .update_many(doc! { "submitted_by": username }, status_update(status, by))
            .await
            .context("decide applications of user")?;
        Ok(UpdateCounts {
            matched_count: result.matched_count,
            modified_count: result.modified_count,
        })
    }

    /// Sets one application's status; `false` when no application has that id.
    pub async fn decide(&self, id: ObjectId, status: Status, by: &str) -> Result<bool, StoreError> {
        let result = self
            .applications
            .update_one(doc! { "_id": id }, status_update(status, by))
            .await
            .context("decide application")?;
        Ok(result.matched_count == 1)
    }

    /// One page of every application, ordered by `_id` so pages never overlap.
    ///
    /// Keyset paging: the page is an `_id` range read from the `_id` index
    /// (`_id >= first`, `limit per_page`), never a skip over documents. Page N's
    /// first key is found by skipping N-1 pages of `_id` index keys in a covered
    /// query (no document is read); page 1 starts at the smallest ObjectId.
    /// `total_items` is the collection's count from its metadata
    /// (`estimatedDocumentCount`), since counting every document would cost
    /// what the skip saves.
    ///
    /// Both reads are ObjectId ranges on `_id`, even page 1's, because that is
    /// the shape FerretDB (with `tools/ferretdb/pushdown.patch`) hands to
    /// PostgreSQL whole, with its sort, skip and limit. Every application's
    /// `_id` is an ObjectId (the original's and ours), so on MongoDB the range
    /// selects what `{}` would.
    pub async fn page_applications(
        &self,
        page: PageRequest,
    ) -> Result<ApplicationsPage, StoreError> {
        let total_items = self
            .applications
            .estimated_document_count()
            .max_time(self.read_limit)
            .await
            .context("count applications")?;
        let documents = self.applications.clone_with_type::<Document>();
        let mut filter = doc! { "_id": { "$gte": ObjectId::from_bytes([0; 12]) } };
        if page.skip() > 0 {
            let first = documents
                .find_one(filter.clone())
                .max_time(self.read_limit)
                .sort(doc! { "_id": 1 })
                .skip(page.skip())
                .projection(doc! { "_id": 1 })
                .await
                .context("find page start")?;
            match first.and_then(|first| first.get("_id").cloned()) {
                Some(first) => filter = doc! { "_id": { "$gte": first } },
                None => {
                    return Ok(ApplicationsPage {
                        data: Vec::new(),
                        total_pages: page.total_pages(total_items),
                        current_page: page.page,
                        total_items,
                    });
                }
            }
        }
        let data = documents
            .find(filter)
            .max_time(self.read_limit)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(page.per_page).unwrap_or(i64::MAX))
            .await
            .context("find applications page")?
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await
            .context("find applications page")?;
        Ok(ApplicationsPage {
            data,
            total_pages: page.total_pages(total_items),
            current_page: page.page,
            total_items,
        })
    }
}

fn status_update(status: Status, by: &str) -> Document {
    let change = StatusChange::now(status, by);
    doc! {
        "$set": { "status": status.as_str() },
        "$push": { "status_history": { "status": change.status, "by": change.by, "at": change.at } },
    }
}
