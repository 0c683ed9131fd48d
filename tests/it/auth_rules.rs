//! The rules every authenticated route shares: 401 for any missing or bad
//! token, 403 for a non-admin on an admin route, admin rights read from the
//! database on every request, and nothing written by a refused request.

use base64::Engine as _;
use finapp_shared::auth::{Claims, Role};
use finapp_tests::{TestApp, TestEnv, all_functions, expose, send};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

const OBJECT_ID: &str = "65f0a0a0a0a0a0a0a0a0a0a0";

/// Every authenticated route with a request that would succeed for the right caller.
fn routes() -> Vec<(Method, String, Option<Value>, bool)> {
    vec![
        (
            Method::POST,
            "/apply".into(),
            Some(json!({"loan_types": ["personal"], "amount": 1500, "purpose": "Car"})),
            false,
        ),
        (Method::GET, "/status".into(), None, false),
        (Method::GET, "/dashboard-info".into(), None, false),
        (Method::GET, "/financing-options".into(), None, false),
        (
            Method::POST,
            "/log-financing-options-visit".into(),
            None,
            false,
        ),
        (
            Method::POST,
            "/apply-finance".into(),
            Some(json!({"loan_types": ["personal"], "amount": "1500", "purpose": "Car"})),
            false,
        ),
        (
            Method::POST,
            "/select-financing-option".into(),
            Some(json!({"option_id": OBJECT_ID})),
            false,
        ),
        (
            Method::PUT,
            "/update_status/someone/approved".into(),
            None,
            true,
        ),
        (
            Method::GET,
            "/admin/applications?page=1&per_page=10".into(),
            None,
            true,
        ),
        (
            Method::PUT,
            format!("/admin/update_status/{OBJECT_ID}/approved"),
            None,
            true,
        ),
    ]
}

fn signed(claims: &impl serde::Serialize, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn unsigned(claims: &Claims) -> String {
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#.to_vec());
    format!("{header}.{}.", b64(serde_json::to_vec(claims).unwrap()))
}

#[tokio::test]
async fn every_protected_route_refuses_missing_and_bad_tokens_with_a_401_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("root_admin").await;
    let now = jsonwebtoken::get_current_timestamp();
    let live = Claims {
        sub: "root_admin".into(),
        role: Role::Admin,
        iat: now,
        exp: now + 600,
        aud: None,
    };
    let expired = Claims {
        iat: now - 7200,
        exp: now - 3600,
        ..live.clone()
    };
    let bad_tokens = [
        ("malformed", Some("Bearer not.a.jwt".to_string())),
        ("not bearer", Some(format!("Basic {admin}"))),
        ("empty bearer", Some("Bearer ".to_string())),
        (
            "expired",
            Some(format!("Bearer {}", signed(&expired, &env.jwt_secret))),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned(&live)))),
        (
            "not valid before an hour from now",
            Some(format!(
                "Bearer {}",
                signed(
                    &json!({"sub": "root_admin", "role": "admin", "iat": now, "nbf": now + 3600, "exp": now + 7200}),
                    &env.jwt_secret
                )
            )),
        ),
        (
            "issued an hour from now",
            Some(format!(
                "Bearer {}",
                signed(
                    &Claims {
                        iat: now + 3600,
                        exp: now + 7200,
                        ..live.clone()
                    },
                    &env.jwt_secret
                )
            )),
        ),
        (
            "wrong key",
            Some(format!(
                "Bearer {}",
                signed(&live, "another-secret-another-secret-another")
            )),
        ),
        // What the relay puts on an event: signed with the right key, for an
        // existing admin, and still refused, having an audience.
        (
            "event",
            Some(format!(
                "Bearer {}",
                expose(&app.deps.tokens.issue_event("root_admin"))
            )),
        ),
        ("missing", None),
    ];

    for (method, path, body, _) in routes() {
        for (case, header) in &bad_tokens {
            let mut request = app.client.request(method.clone(), app.url(&path));
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, reply) = send(request).await;
            assert_eq!(status, 401, "{method} {path} with {case} token: {reply}");
            assert_eq!(
                reply["error"], "unauthorized",
                "{method} {path} with {case} token"
            );
        }
    }
    assert_eq!(env.count("applications").await, 0);
    assert_eq!(env.count("user_financing_selections").await, 0);
}

#[tokio::test]
async fn a_plain_user_gets_403_on_every_admin_route() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let credentials = json!({"username": "plain_user", "password": "secure_password"});
    let (status, signed_up) = app.post_json("/signup", &credentials).await;
    assert_eq!(status, 201);
    let token = signed_up["access_token"].as_str().unwrap().to_owned();
    app.apply(&token, 100.0).await;

    for (method, path, _, admin_only) in routes().into_iter().filter(|route| route.3) {
        let (status, reply) = send(app.authed(method.clone(), &path, &token)).await;
        assert!(admin_only);
        assert_eq!(
            (status, reply["error"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }
    // Even a token that claims the admin role is refused: the database says "user".
    let forged_role = Claims {
        role: Role::Admin,
        ..app.deps.tokens.verify(&token).unwrap()
    };
    let claimed_admin = signed(&forged_role, &env.jwt_secret);
    let (status, _) = send(app.authed(
        Method::PUT,
        "/update_status/plain_user/approved",
        &claimed_admin,
    ))
    .await;
    assert_eq!(status, 403);
    let stored = env.any_document("applications").await.unwrap();
    assert_eq!(
        stored.get_str("status").unwrap(),
        "pending",
        "a refused request changed data"
    );
}

#[tokio::test]
async fn an_admin_demoted_in_the_database_gets_403_with_the_old_token() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.admin_token("soon_demoted").await;
    let (status, _) = send(app.authed(Method::GET, "/admin/applications", &token)).await;
    assert_eq!(status, 200);

    env.db()
        .await
        .collection::<mongodb::bson::Document>("users")
        .update_one(
            mongodb::bson::doc! {"username": "soon_demoted"},
            mongodb::bson::doc! {"$set": {"role": "user"}},
        )
        .await
        .unwrap();

    let (status, reply) = send(app.authed(Method::GET, "/admin/applications", &token)).await;
    assert_eq!((status, reply["error"].as_str()), (403, Some("forbidden")));
}
