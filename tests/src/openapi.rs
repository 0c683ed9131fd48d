//! The OpenAPI 3.1 document of every HTTP route, generated from the handlers'
//! `#[utoipa::path]` annotations. `openapi.json` at the workspace root is this
//! document committed; a test fails when it is stale, and
//! `FINAPP_UPDATE_OPENAPI=1 cargo test -p finapp-tests openapi` rewrites it.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "FinApp functions",
        version = "0.1.0",
        description = "Sign-up and login, finance applications, admin review and analytics. \
            Every error is `{\"error\": CODE, \"message\": TEXT}`."
    ),
    paths(
        signup::signup,
        login::login,
        apply::apply,
        apply::apply_finance,
        status::status,
        dashboard_info::dashboard_info,
        financing_options::financing_options,
        select_financing_option::select,
        log_financing_options_visit::log_visit,
        update_status::update_status,
        admin_applications::admin_applications,
        admin_update_status::admin_update_status,
        analytics::analytics,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign-up and login"),
        (name = "finance", description = "A user's own applications and financing options"),
        (name = "admin", description = "Admin review and analytics; admin rights are checked on every request"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the authenticated routes refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as committed: pretty JSON with a final newline.
pub fn document() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serializes");
    json.push('\n');
    json
}
