//! The admin routes and the `finapp-admin` tool.

use finapp_tests::{TestApp, TestEnv, admin_tool, all_functions, send};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use reqwest::Method;
use serde_json::{Value, json};

async fn history(env: &TestEnv, id: &str) -> Vec<Document> {
    let id = ObjectId::parse_str(id).unwrap();
    let stored = env
        .db()
        .await
        .collection::<Document>("applications")
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap();
    stored
        .get_array("status_history")
        .unwrap()
        .iter()
        .map(|entry| entry.as_document().unwrap().clone())
        .collect()
}

#[tokio::test]
async fn update_status_decides_every_application_of_a_user_and_records_who_did_it() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    let user = app.token_for("borrower").await;
    let ids = [app.apply(&user, 10.0).await, app.apply(&user, 20.0).await];
    app.apply(&app.token_for("bystander").await, 30.0).await;

    let (status, reply) =
        send(app.authed(Method::PUT, "/update_status/borrower/approved", &admin)).await;

    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (
            reply["matched_count"].as_u64(),
            reply["modified_count"].as_u64()
        ),
        (Some(2), Some(2))
    );
    for id in &ids {
        let entries = history(&env, id).await;
        let last = entries.last().unwrap();
        assert_eq!(
            (last.get_str("status").unwrap(), last.get_str("by").unwrap()),
            ("approved", "chief")
        );
        assert!(matches!(last.get("at"), Some(Bson::DateTime(_))));
    }
    let (_, mine) = send(app.authed(Method::GET, "/status", &user)).await;
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "approved")
    );
    let (_, theirs) =
        send(app.authed(Method::GET, "/status", &app.token_for("bystander").await)).await;
    assert_eq!(theirs[0]["status"], "pending");
}

#[tokio::test]
async fn a_status_other_than_approved_or_denied_is_422_and_changes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    let id = app.apply(&app.token_for("borrower").await, 10.0).await;

    for path in [
        "/update_status/borrower/pending".to_string(),
        "/update_status/borrower/APPROVED".to_string(),
        format!("/admin/update_status/{id}/maybe"),
        "/admin/update_status/not-an-id/approved".to_string(),
    ] {
        let (status, reply) = send(app.authed(Method::PUT, &path, &admin)).await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (422, Some("validation_error")),
            "{path}"
        );
    }
    assert_eq!(history(&env, &id).await.len(), 1);
}

#[tokio::test]
async fn admin_update_status_decides_one_application_and_404s_an_unknown_one() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    let user = app.token_for("borrower").await;
    let (decided, untouched) = (app.apply(&user, 10.0).await, app.apply(&user, 20.0).await);

    let (status, reply) = send(app.authed(
        Method::PUT,
        &format!("/admin/update_status/{decided}/denied"),
        &admin,
    ))
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (reply["application_id"].as_str(), reply["status"].as_str()),
        (Some(decided.as_str()), Some("denied"))
    );
    assert_eq!(
        history(&env, &decided)
            .await
            .last()
            .unwrap()
            .get_str("by")
            .unwrap(),
        "chief"
    );
    assert_eq!(history(&env, &untouched).await.len(), 1);

    let unknown = ObjectId::new().to_hex();
    let (status, reply) = send(app.authed(
        Method::PUT,
        &format!("/admin/update_status/{unknown}/denied"),
        &admin,
    ))
    .await;
    assert_eq!((status, reply["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn twenty_five_applications_at_ten_per_page_make_three_pages_without_repeats() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    for i in 0..25 {
        app.apply(
            &app.token_for(&format!("user{}", i % 4)).await,
            f64::from(i + 1),
        )
        .await;
    }

    let mut seen = std::collections::HashSet::new();
    let mut sizes = Vec::new();
    for page in 1..=3 {
        let (status, reply) = send(app.authed(
            Method::GET,
            &format!("/admin/applications?page={page}&per_page=10"),
            &admin,
        ))
        .await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(
            (
                reply["total_pages"].as_u64(),
                reply["total_items"].as_u64(),
                reply["current_page"].as_u64()
            ),
            (Some(3), Some(25), Some(page))
        );
        let data = reply["data"].as_array().unwrap();
        sizes.push(data.len());
        for item in data {
            assert!(
                seen.insert(item["_id"].as_str().unwrap().to_owned()),
                "{} appeared twice",
                item["_id"]
            );
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(seen.len(), 25);
}

#[tokio::test]
async fn bad_paging_parameters_are_422() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;

    for query in [
        "page=0",
        "per_page=0",
        "per_page=101",
        "page=abc",
        "page=-1",
        "per_page=1.5",
    ] {
        let (status, reply) =
            send(app.authed(Method::GET, &format!("/admin/applications?{query}"), &admin)).await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (422, Some("validation_error")),
            "{query}: {reply}"
        );
    }
    let (status, reply) = send(app.authed(Method::GET, "/admin/applications", &admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({"data": [], "total_pages": 0, "current_page": 1, "total_items": 0})
    );
}

#[tokio::test]
async fn finapp_admin_creates_or_promotes_an_admin_with_a_hashed_password_idempotently() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let (status, _) = app
        .post_json(
            "/signup",
            &json!({"username": "promoted", "password": "first_password"}),
        )
        .await;
    assert_eq!(status, 201);

    for _ in 0..2 {
        let (ok, output) =
            admin_tool(&env, &["create-admin", "promoted"], "new_admin_password\n").await;
        assert!(ok, "{output}");
    }

    let users = env.db().await.collection::<Document>("users");
    assert_eq!(
        users
            .count_documents(doc! {"username": "promoted"})
            .await
            .unwrap(),
        1
    );
    let stored = users
        .find_one(doc! {"username": "promoted"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("role").unwrap(), "admin");
    let raw = format!("{stored:?}");
    assert!(
        !raw.contains("new_admin_password"),
        "password stored in plain text"
    );
    let (status, login) = app
        .post_json(
            "/login",
            &json!({"username": "promoted", "password": "new_admin_password"}),
        )
        .await;
    assert_eq!((status, &login["role"]), (200, &Value::from("admin")));
    let token = login["access_token"].as_str().unwrap();
    let (status, _) = send(app.authed(Method::GET, "/admin/applications", token)).await;
    assert_eq!(status, 200);

    let (ok, output) = admin_tool(&env, &["create-admin", "promoted"], "short\n").await;
    assert!(!ok && output.contains("password"), "{output}");
}

#[tokio::test]
async fn finapp_admin_seeds_the_five_original_options_once() {
    let env = TestEnv::new();
    for expected in ["5 new", "0 new"] {
        let (ok, output) = admin_tool(&env, &["seed-financing-options"], "").await;
        assert!(ok && output.contains(expected), "{output}");
    }
    assert_eq!(env.count("financing_options").await, 5);
}
