//! Finance domain rules: what makes an application, a status decision or a page
//! request valid. Pure logic, free of HTTP and storage.

use serde::{Deserialize, Serialize};

/// A validated finance application, as `POST /apply` accepts it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewApplication {
    pub loan_types: Vec<String>,
    pub amount: f64,
    pub purpose: String,
}

/// `POST /apply`'s body before validation (serialized only to fingerprint
/// it for an `Idempotency-Key`).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"loan_types": ["personal"], "amount": 15000, "purpose": "Car purchase"}))]
pub struct ApplicationRequest {
    pub loan_types: Vec<String>,
    /// A number, or a string holding one (the original web client sends the
    /// form's text, e.g. `"15000"`, and the original services accepted it).
    #[serde(deserialize_with = "number_or_numeric_string")]
    #[schema(schema_with = amount_schema)]
    pub amount: f64,
    pub purpose: String,
}

/// Reads a JSON number, or a string that parses as one after trimming.
fn number_or_numeric_string<'de, D: serde::Deserializer<'de>>(de: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    let invalid = || serde::de::Error::custom("amount must be a number or a numeric string");
    match Raw::deserialize(de).map_err(|_| invalid())? {
        Raw::Number(number) => Ok(number),
        Raw::Text(text) => text.trim().parse().map_err(|_| invalid()),
    }
}

fn amount_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")),
        )
        .description(Some("Greater than 0 and at most 100000000"))
        .build()
        .into()
}

impl NewApplication {
    pub const MAX_LOAN_TYPES: usize = 10;
    pub const MAX_LOAN_TYPE_CHARS: usize = 64;
    pub const MAX_AMOUNT: f64 = 100_000_000.0;
    pub const MAX_PURPOSE_CHARS: usize = 1000;
}

impl TryFrom<ApplicationRequest> for NewApplication {
    type Error = String;

    fn try_from(request: ApplicationRequest) -> Result<Self, String> {
        let count = request.loan_types.len();
        if !(1..=Self::MAX_LOAN_TYPES).contains(&count) {
            return Err(format!(
                "loan_types must hold 1 to {} entries",
                Self::MAX_LOAN_TYPES
            ));
        }
        let loan_types = request
            .loan_types
            .into_iter()
            .map(|loan_type| {
                let trimmed = loan_type.trim();
                crate::domain::no_nul("loan_types", trimmed)?;
                let chars = trimmed.chars().count();
                if chars == 0 || chars > Self::MAX_LOAN_TYPE_CHARS {
                    Err(format!(
                        "each loan type must be 1 to {} characters",
                        Self::MAX_LOAN_TYPE_CHARS
                    ))
                } else {
                    Ok(trimmed.to_owned())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let amount = request.amount;
        if !amount.is_finite() || amount <= 0.0 || amount > Self::MAX_AMOUNT {
            return Err("amount must be a number greater than 0 and at most 100000000".into());
        }
        let purpose = request.purpose.trim();
        crate::domain::no_nul("purpose", purpose)?;
        let chars = purpose.chars().count();
        if chars == 0 || chars > Self::MAX_PURPOSE_CHARS {
            return Err(format!(
                "purpose must be 1 to {} characters",
                Self::MAX_PURPOSE_CHARS
            ));
        }
        Ok(Self {
            loan_types,
            amount,
            purpose: purpose.to_owned(),
        })
    }
}

/// An application's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Denied,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
        }
    }

    /// An admin's decision: only `approved` or `denied` may be set by hand.
    pub fn parse_decision(raw: &str) -> Result<Self, String> {
        match raw {
            "approved" => Ok(Status::Approved),
            "denied" => Ok(Status::Denied),
            _ => Err("status must be \"approved\" or \"denied\"".into()),
        }
    }
}

/// The statuses an admin may set: the `{status}` path parameter of the status
/// routes, as the OpenAPI document describes it (handlers parse it with
/// [`Status::parse_decision`], which says why anything else is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Approved,
    Denied,
}

/// A validated page request for the admin listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub per_page: u64,
}

/// The admin listing's query string before validation.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 or more; default 1.
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u64>,
    /// 1 to 100; default 10.
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u64>,
}

impl PageRequest {
    pub const MAX_PER_PAGE: u64 = 100;
    /// Far beyond any real listing; keeps `skip` well inside an `i64`.
    pub const MAX_PAGE: u64 = 1_000_000;

    /// How many items precede this page.
    pub fn skip(self) -> u64 {
        (self.page - 1) * self.per_page
    }

    /// Pages needed for `total` items (0 when there are none).
    pub fn total_pages(self, total: u64) -> u64 {
        total.div_ceil(self.per_page)
    }
}

impl TryFrom<PageQuery> for PageRequest {
    type Error = String;

    fn try_from(query: PageQuery) -> Result<Self, String> {
        let page = query.page.unwrap_or(1);
        let per_page = query.per_page.unwrap_or(10);
        if !(1..=Self::MAX_PAGE).contains(&page) {
            return Err(format!("page must be 1 to {}", Self::MAX_PAGE));
        }
        if !(1..=Self::MAX_PER_PAGE).contains(&per_page) {
            return Err(format!("per_page must be 1 to {}", Self::MAX_PER_PAGE));
        }
        Ok(Self { page, per_page })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(loan_types: &[&str], amount: f64, purpose: &str) -> ApplicationRequest {
        ApplicationRequest {
            loan_types: loan_types.iter().map(|s| s.to_string()).collect(),
            amount,
            purpose: purpose.into(),
        }
    }

    #[test]
    fn a_well_formed_application_is_accepted_and_trimmed() {
        let app =
            NewApplication::try_from(request(&[" personal "], 15000.0, " Car purchase ")).unwrap();
        assert_eq!(app.loan_types, ["personal"]);
        assert_eq!(app.purpose, "Car purchase");
        assert!(
            NewApplication::try_from(request(&["x"; 10], 100_000_000.0, &"p".repeat(1000))).is_ok()
        );
    }

    #[test]
    fn applications_outside_the_rules_are_refused() {
        let long_type = "t".repeat(65);
        let long_purpose = "p".repeat(1001);
        let cases = [
            request(&[], 10.0, "p"),
            request(&["x"; 11], 10.0, "p"),
            request(&[""], 10.0, "p"),
            request(&["  "], 10.0, "p"),
            request(&[&long_type], 10.0, "p"),
            request(&["x"], 0.0, "p"),
            request(&["x"], -5.0, "p"),
            request(&["x"], 100_000_000.5, "p"),
            request(&["x"], f64::NAN, "p"),
            request(&["x"], f64::INFINITY, "p"),
            request(&["x"], 10.0, ""),
            request(&["x"], 10.0, "   "),
            request(&["x"], 10.0, &long_purpose),
            request(&["x\0y"], 10.0, "p"),
            request(&["x"], 10.0, "car\0"),
        ];
        for case in cases {
            let shown = format!("{case:?}");
            assert!(NewApplication::try_from(case).is_err(), "accepted {shown}");
        }
    }

    #[test]
    fn the_amount_may_be_a_number_or_a_numeric_string() {
        let parse = |amount: &str| {
            serde_json::from_str::<ApplicationRequest>(&format!(
                r#"{{"loan_types": ["x"], "amount": {amount}, "purpose": "p"}}"#
            ))
            .map(|request| request.amount)
        };
        assert_eq!(parse("15000").unwrap(), 15000.0);
        assert_eq!(parse(r#""15000""#).unwrap(), 15000.0);
        assert_eq!(parse(r#"" 1500.5 ""#).unwrap(), 1500.5);
        for bad in [r#""abc""#, r#""""#, r#""15,000""#, "true", "null", "[1]"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("amount must be a number"), "{bad}: {err}");
        }
        // A string is held to the same limits as a number.
        let huge = serde_json::from_str::<ApplicationRequest>(
            r#"{"loan_types": ["x"], "amount": "100000001", "purpose": "p"}"#,
        )
        .unwrap();
        assert!(NewApplication::try_from(huge).is_err());
    }

    #[test]
    fn only_approved_and_denied_are_decisions() {
        assert_eq!(Status::parse_decision("approved"), Ok(Status::Approved));
        assert_eq!(Status::parse_decision("denied"), Ok(Status::Denied));
        for raw in ["pending", "APPROVED", "", "approve"] {
            assert!(Status::parse_decision(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn pages_default_to_the_first_ten_and_are_bounded() {
        let default = PageRequest::try_from(PageQuery::default()).unwrap();
        assert_eq!(
            default,
            PageRequest {
                page: 1,
                per_page: 10
            }
        );
        for (page, per_page) in [(0, 10), (1, 0), (1, 101), (PageRequest::MAX_PAGE + 1, 10)] {
            let query = PageQuery {
                page: Some(page),
                per_page: Some(per_page),
            };
            assert!(
                PageRequest::try_from(query).is_err(),
                "page={page} per_page={per_page}"
            );
        }
    }

    #[test]
    fn twenty_five_items_at_ten_per_page_make_three_pages() {
        let third = PageRequest {
            page: 3,
            per_page: 10,
        };
        assert_eq!(third.total_pages(25), 3);
        assert_eq!(third.skip(), 20);
        assert_eq!(third.total_pages(0), 0);
    }
}
