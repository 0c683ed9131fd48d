//! The user-facing finance routes against the real FerretDB and RabbitMQ.

use finapp_shared::events::{Event, EventType};
use finapp_tests::{RelayTask, TestApp, TestEnv, all_functions, event_token, send};
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn apply_stores_a_pending_application_for_the_token_holder_and_publishes_it() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let _relay = RelayTask::spawn(app.deps.clone());
    let token = app.token_for("applicant").await;
    // The original document's example body, plus a forged owner that must be ignored.
    let body = json!({"loan_types": ["personal"], "amount": 15000, "purpose": "Car purchase", "submitted_by": "mallory"});

    let (status, reply) = send(app.authed(Method::POST, "/apply", &token).json(&body)).await;

    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["submitted_by"], "applicant");
    assert_eq!(reply["message"], "Finance application submitted");
    let id = ObjectId::parse_str(reply["application_id"].as_str().unwrap()).unwrap();
    let stored = env
        .db()
        .await
        .collection::<Document>("applications")
        .find_one(doc! {"_id": id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("submitted_by").unwrap(), "applicant");
    assert_eq!(stored.get_str("status").unwrap(), "pending");
    assert_eq!(stored.get_f64("amount").unwrap(), 15000.0);
    assert!(stored.get_datetime("submitted_at").is_ok());
    assert_eq!(stored.get_array("status_history").unwrap().len(), 1);

    let message = env.next_message(EventType::ApplicationSubmitted).await;
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event.username, "applicant");
    // Published with an event token of the relay's, not the caller's token.
    assert_ne!(event_token(&app.deps, &message, "applicant"), token);
}

#[tokio::test]
async fn apply_refuses_every_invalid_application_with_a_4xx_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("applicant").await;
    let long = "x".repeat(65);
    let cases = [
        json!({"loan_types": [], "amount": 10, "purpose": "p"}),
        json!({"loan_types": ["a","b","c","d","e","f","g","h","i","j","k"], "amount": 10, "purpose": "p"}),
        json!({"loan_types": [""], "amount": 10, "purpose": "p"}),
        json!({"loan_types": [long], "amount": 10, "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": 0, "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": -1, "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": 100_000_001, "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": "fifteen", "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": "0", "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": "100000001", "purpose": "p"}),
        json!({"loan_types": ["personal"], "amount": 10, "purpose": ""}),
        json!({"loan_types": ["personal"], "amount": 10, "purpose": "p".repeat(1001)}),
        json!({"loan_types": "personal", "amount": 10, "purpose": "p"}),
        json!({"amount": 10, "purpose": "p"}),
        json!(null),
    ];
    for path in ["/apply", "/apply-finance"] {
        for body in &cases {
            let (status, reply) = send(app.authed(Method::POST, path, &token).json(body)).await;
            assert!((400..500).contains(&status), "{path} {body} -> {status}");
            assert!(reply["error"].is_string(), "{path} {body} -> {reply}");
        }
    }
    let (status, _) = send(
        app.authed(Method::POST, "/apply", &token)
            .header("content-type", "application/json")
            .body("{\"amount\": 1e999}"),
    )
    .await;
    assert!((400..500).contains(&status));
    assert_eq!(env.count("applications").await, 0);
}

#[tokio::test]
async fn status_lists_only_the_callers_applications_newest_first() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let (mine, theirs) = (
        app.token_for("me_user").await,
        app.token_for("them_user").await,
    );

    let (status, empty) = send(app.authed(Method::GET, "/status", &mine)).await;
    assert_eq!((status, empty), (200, json!([])));

    let first = app.apply(&mine, 100.0).await;
    app.apply(&theirs, 200.0).await;
    let second = app.apply(&mine, 300.0).await;

    let (status, list) = send(app.authed(Method::GET, "/status", &mine)).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|a| a["submitted_by"] == "me_user")
    );
}

#[tokio::test]
async fn dashboard_info_counts_the_callers_applications_by_status() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let applications = env.db().await.collection::<Document>("applications");
    let statuses = [
        "pending", "pending", "approved", "denied", "denied", "denied",
    ];
    for status in statuses {
        applications
            .insert_one(doc! {"submitted_by": "counted", "status": status, "amount": 5})
            .await
            .unwrap();
    }
    applications
        .insert_one(doc! {"submitted_by": "someone_else", "status": "approved"})
        .await
        .unwrap();

    let (status, info) = send(app.authed(
        Method::GET,
        "/dashboard-info",
        &app.token_for("counted").await,
    ))
    .await;

    assert_eq!(status, 200);
    assert_eq!(
        info,
        json!({"username": "counted", "application_summary": {"total_applications": 6, "approved": 1, "denied": 3, "pending": 2}})
    );
}

#[tokio::test]
async fn financing_options_lists_the_seeded_options_and_only_a_visit_log_is_a_check() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let _relay = RelayTask::spawn(app.deps.clone());
    assert_eq!(
        finapp_admin::seed_financing_options(&app.deps.store)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        finapp_admin::seed_financing_options(&app.deps.store)
            .await
            .unwrap(),
        0,
        "seeding is not idempotent"
    );
    let token = app.token_for("browser").await;

    let (status, options) = send(app.authed(Method::GET, "/financing-options", &token)).await;

    assert_eq!(status, 200);
    let options = options.as_array().unwrap();
    let names: Vec<&str> = options
        .iter()
        .map(|o| o["option_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Home Loans",
            "Car Loans",
            "Education Loans",
            "Personal Loans",
            "Business Loans"
        ]
    );
    assert!(
        options
            .iter()
            .all(|o| ObjectId::parse_str(o["_id"].as_str().unwrap()).is_ok())
    );
    assert_eq!(
        options[0]["eligibility_criteria"],
        json!({"min_income": 60000, "credit_score": 720})
    );

    // Reading the catalogue publishes nothing; logging the visit publishes one check.
    let (status, logged) =
        send(app.authed(Method::POST, "/log-financing-options-visit", &token)).await;
    assert_eq!(status, 200);
    assert_eq!(logged, json!({"message": "Visit logged successfully"}));
    let message = env.next_message(EventType::UserActivity).await;
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event.username, "browser");
    assert!(
        event.message.contains("checked financing options"),
        "{}",
        event.message
    );
    assert_eq!(
        env.queue_depth(&env.queue(EventType::UserActivity)).await,
        0,
        "reading the catalogue published an event"
    );
}

#[tokio::test]
async fn selecting_an_option_keeps_one_selection_per_user_even_under_concurrency() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let _relay = RelayTask::spawn(app.deps.clone());
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    let token = app.token_for("chooser").await;
    let (_, options) = send(app.authed(Method::GET, "/financing-options", &token)).await;
    let ids: Vec<String> = options
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["_id"].as_str().unwrap().to_owned())
        .collect();

    let attempts = (0..10).map(|i| {
        let body = json!({"option_id": ids[i % ids.len()]});
        send(
            app.authed(Method::POST, "/select-financing-option", &token)
                .json(&body),
        )
    });
    let replies = futures_util::future::join_all(attempts).await;

    for (status, reply) in &replies {
        assert_eq!(*status, 200, "{reply}");
        assert_eq!(reply["message"], "Financing option selected successfully");
        assert!(reply["selected_option"]["option_name"].is_string());
    }
    let selections = env
        .db()
        .await
        .collection::<Document>("user_financing_selections");
    assert_eq!(
        selections
            .count_documents(doc! {"user": "chooser"})
            .await
            .unwrap(),
        1
    );
    let message = env.next_message(EventType::FinancingOptionSelected).await;
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event.username, "chooser");
}

#[tokio::test]
async fn a_malformed_option_id_is_422_and_an_unknown_one_is_404() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("chooser").await;

    for (body, expected) in [
        (json!({"option_id": "not-an-id"}), 422),
        (json!({"option_id": 7}), 422),
        (json!({}), 422),
        (json!({"option_id": ObjectId::new().to_hex()}), 404),
    ] {
        let (status, reply) = send(
            app.authed(Method::POST, "/select-financing-option", &token)
                .json(&body),
        )
        .await;
        assert_eq!(status, expected, "{body} -> {reply}");
        assert!(reply["error"].is_string());
    }
    assert_eq!(env.count("user_financing_selections").await, 0);
}

#[tokio::test]
async fn documents_written_by_the_original_services_never_cause_a_5xx() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let db = env.db().await;
    // The original's shapes: no submitted_at, integer amounts, no history, odd leftovers.
    db.collection::<Document>("applications")
        .insert_many([
            doc! {"user": "legacy", "amount": 5000_i32, "status": "pending", "submitted_by": "legacy"},
            doc! {"loan_types": ["home"], "amount": 7_i64, "purpose": "x", "status": "approved", "submitted_by": "legacy"},
            doc! {"submitted_by": "legacy", "status": 3, "submitted_at": "yesterday", "amount": "lots"},
            doc! {"submitted_by": "legacy", "submitted_at": DateTime::now()},
        ])
        .await
        .unwrap();
    db.collection::<Document>("users")
        .insert_one(doc! {"username": "legacy_admin", "password": "plaintext!", "role": "admin"})
        .await
        .unwrap();
    let user = app.token_for("legacy").await;
    let admin = app
        .deps
        .tokens
        .issue("legacy_admin", finapp_shared::auth::Role::Admin);
    let admin = finapp_tests::expose(&admin);

    let (status, list) = send(app.authed(Method::GET, "/status", &user)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 4);
    let (status, info) = send(app.authed(Method::GET, "/dashboard-info", &user)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["application_summary"]["total_applications"], 4);
    let (status, page) = send(app.authed(Method::GET, "/admin/applications", admin)).await;
    assert_eq!(
        (status, &page["total_items"]),
        (200, &Value::from(4)),
        "{page}"
    );
    let (status, reply) =
        send(app.authed(Method::PUT, "/update_status/legacy/denied", admin)).await;
    assert_eq!(
        (status, &reply["matched_count"]),
        (200, &Value::from(4)),
        "{reply}"
    );
}
