//! Taking over from the original services: a database and a broker prepared
//! exactly as they leave them, `finapp-admin doctor`, `migrate` and
//! `migrate-queues`, and `.env` files.

use std::time::Duration;

use finapp_shared::{events::EventType, store::ORIGINAL_DATABASE};
use finapp_tests::{
    FunctionProcess, Process, TestEnv, admin_tool, function_binary, send, wait_for,
};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use serde_json::json;
use tokio::process::Command;

/// A bcrypt hash as the original stored it: BSON binary.
fn original_hash(password: &str) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: bcrypt::hash(password, 4).unwrap().into_bytes(),
    })
}

/// Declares `queue` as the original's pika did: `queue_declare(queue=name)`,
/// every option at its default (not durable, not exclusive, no auto-delete).
async fn declare_as_pika(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Publishes as the original did: a plain-text body, the bare token in `Authorization`.
async fn publish_as_pika(connection: &Connection, queue: &str, body: &str, token: &str) {
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "Authorization".into(),
        AMQPValue::LongString(LongString::from(token)),
    );
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
}

async fn broker(env: &TestEnv) -> Connection {
    Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap()
}

/// The original's data: its admin script's plaintext admin, a name taken
/// twice (it had no unique index), users without role, an application without
/// `submitted_at` and with an integer amount, its sample analytics event.
async fn seed_original_data(env: &TestEnv) {
    let db = env.db().await;
    db.collection::<Document>("users")
        .insert_many([
            doc! {"username": "admin", "password": "hashedpassword123", "email": "admin@example.com", "role": "admin"},
            doc! {"username": "alice", "password": original_hash("alice_password")},
            doc! {"username": "alice", "password": original_hash("another_password")},
            doc! {"username": "bob", "password": original_hash("bob_password")},
        ])
        .await
        .unwrap();
    db.collection::<Document>("applications")
        .insert_one(doc! {"loan_types": ["personal"], "amount": 5000, "purpose": "Old car", "status": "pending", "submitted_by": "bob"})
        .await
        .unwrap();
    db.collection::<Document>("user_analytics")
        .insert_one(
            doc! {"username": "admin", "event": "logged in", "timestamp": "2024-10-04T00:00:00Z"},
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_bundle_takes_over_the_database_and_broker_the_original_leaves() {
    // This test's database plays the original's `root`.
    let env = TestEnv::new();
    seed_original_data(&env).await;
    let connection = broker(&env).await;
    for kind in EventType::ALL {
        declare_as_pika(&connection, &env.queue(kind)).await;
    }

    // A function refuses to start and names the real cause.
    let mut command = Command::new(function_binary("login"));
    command.env_clear().env("PORT", "0").envs(env.vars());
    let mut refused = Process::spawn(command);
    let status = refused.wait_exit(Duration::from_secs(30)).await;
    let output = refused.output().join("\n");
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("duplicate usernames in users: alice (2); run finapp-admin doctor"),
        "{output}"
    );
    assert!(!output.contains("cannot reach MongoDB"), "{output}");

    // doctor reports each problem, with counts.
    let (ok, report) = admin_tool(&env, &["doctor"], "").await;
    assert!(!ok, "duplicates must make doctor fail: {report}");
    for expected in [
        "BLOCKING 1: duplicate usernames in users: alice (2)",
        "FIXABLE  1: plaintext passwords in users: admin",
        "NOTE     3: users without role",
        "NOTE     1: applications without submitted_at",
        "NOTE     1: applications with an integer amount",
        "FIXABLE  4: queues declared with other arguments",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from:\n{report}"
        );
    }
    assert!(
        !report.contains("hashedpassword123"),
        "doctor printed a password"
    );

    // migrate refuses while duplicates remain, and changes nothing.
    let (ok, refusal) = admin_tool(&env, &["migrate"], "").await;
    assert!(!ok && refusal.contains("alice (2)"), "{refusal}");
    let users = env.db().await.collection::<Document>("users");
    let admin = users
        .find_one(doc! {"username": "admin"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admin.get_str("password").unwrap(), "hashedpassword123");

    // Resolved by hand; then migrate fixes the rest.
    users.delete_one(doc! {"username": "alice"}).await.unwrap();
    let (ok, migrated) = admin_tool(&env, &["migrate"], "").await;
    assert!(
        ok && migrated.contains("1 plaintext passwords hashed"),
        "{migrated}"
    );
    let (ok, migrated_again) = admin_tool(&env, &["migrate"], "").await;
    assert!(
        ok && migrated_again.contains("0 plaintext passwords hashed"),
        "{migrated_again}"
    );

    // Everything starts; the old admin logs in with the old password, and the
    // login's event flows (relayed by notify-consumer) through the adopted,
    // still non-durable, queue.
    let login = FunctionProcess::start("login", &env).await;
    // A message an old publisher left in its queue: plain text, bare token of {sub, exp}.
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let old_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "bob", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(env.jwt_secret.as_bytes()),
    )
    .unwrap();
    publish_as_pika(
        &connection,
        &env.queue(EventType::UserActivity),
        "User bob checked financing options at 2024-10-05T10:00:00",
        &old_token,
    )
    .await;
    let mut consumer_command = Command::new(function_binary("notify-consumer"));
    consumer_command.env_clear().envs(env.vars());
    let consumer = Process::spawn(consumer_command);
    let client = reqwest::Client::new();
    let (status, body) = send(
        client
            .post(format!("{}/login", login.base_url))
            .json(&json!({"username": "admin", "password": "hashedpassword123"})),
    )
    .await;
    assert_eq!((status, &body["role"]), (200, &json!("admin")), "{body}");
    wait_for(
        "the admin's login and the old publisher's message in user_analytics",
        Duration::from_secs(30),
        || async {
            let analytics = env.db().await.collection::<Document>("user_analytics");
            let logins = analytics
                .count_documents(doc! {"username": "admin", "event": {"$regex": "logged in"}})
                .await
                .unwrap();
            let checks = analytics
                .count_documents(
                    doc! {"username": "bob", "event": {"$regex": "checked financing options"}},
                )
                .await
                .unwrap();
            (logins == 2 && checks == 1).then_some(())
        },
    )
    .await;
    // notify-consumer is the only process of the bundle that opens the
    // broker (its consumer and its relay): the warning is its, once per queue.
    let warning = consumer
        .wait_for_line("queue exists with other arguments", Duration::from_secs(5))
        .await;
    assert!(warning.contains("durable"), "{warning}");
    let adopted = |line: &&String| line.contains("queue exists with other arguments");
    assert_eq!(
        consumer
            .output()
            .iter()
            .filter(adopted)
            .filter(|line| line.contains(&env.queue(EventType::UserActivity)))
            .count(),
        1,
        "the warning is given once per queue"
    );
    assert!(
        !login.process.output().iter().any(|line| adopted(&line)),
        "the login function declared queues: it must never open the broker"
    );
    drop(consumer);
}

#[tokio::test]
async fn doctor_names_the_original_database_when_the_configured_one_is_empty() {
    let env = TestEnv::new();
    // A user of this test's own in the original's database, removed at the end.
    let marker = format!("doctor_{}", &env.queue_prefix[5..15]);
    let root = env.db().await.client().database(ORIGINAL_DATABASE);
    let users = root.collection::<Document>("users");
    users
        .insert_one(doc! {"username": &marker, "password": original_hash("pw_of_marker")})
        .await
        .unwrap();
    let (ok, report) = admin_tool(&env, &["doctor"], "").await;
    users.delete_one(doc! {"username": &marker}).await.unwrap();
    assert!(!ok, "{report}");
    assert!(
        report.contains("users in database root (the original's) and none in")
            && report.contains("MONGODB_DATABASE=root"),
        "{report}"
    );
}

#[tokio::test]
async fn migrate_queues_moves_a_queue_of_a_thousand_messages_without_losing_one() {
    let env = TestEnv::new();
    let queue = env.queue(EventType::UserActivity);
    let connection = broker(&env).await;
    declare_as_pika(&connection, &queue).await;
    let channel = connection.create_channel().await.unwrap();
    for n in 0..1000 {
        let mut headers = FieldTable::default();
        headers.insert(
            "Authorization".into(),
            AMQPValue::LongString(LongString::from("a-token")),
        );
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("User u{n} checked financing options").as_bytes(),
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap();
    }
    wait_for("1,000 messages queued", Duration::from_secs(10), || async {
        (env.queue_depth(&queue).await == 1000).then_some(())
    })
    .await;

    let (ok, output) = admin_tool(&env, &["migrate-queues"], "").await;
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("{queue}: now durable, 1000 messages kept")),
        "{output}"
    );
    let (ok, again) = admin_tool(&env, &["migrate-queues"], "").await;
    assert!(
        ok && again.contains("already has the bundle's definition"),
        "{again}"
    );

    // Durable now and of the deployment's type, quorum by default (the
    // bundle's own declaration is accepted), holding every message once.
    let channel = connection.create_channel().await.unwrap();
    finapp_broker::topology::declare_durable(&channel, &queue, env.config().queue_type)
        .await
        .expect("the queue has the bundle's definition");
    let mut bodies = std::collections::BTreeSet::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), Default::default())
        .await
        .unwrap()
    {
        assert_eq!(
            finapp_tests::authorization_header(&message).as_deref(),
            Some("a-token"),
            "a header was lost"
        );
        bodies.insert(String::from_utf8(message.delivery.data.clone()).unwrap());
        message.delivery.ack(Default::default()).await.unwrap();
    }
    assert_eq!(bodies.len(), 1000);
    // Nothing is left behind in the holding queue.
    let holding = format!("{queue}.finapp-migrating");
    let probe = connection.create_channel().await.unwrap();
    let gone = probe
        .queue_declare(
            holding.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "the holding queue {holding} was left behind");
}

#[tokio::test]
async fn finapp_admin_reads_a_dot_env_file_under_the_environment() {
    let env = TestEnv::new();
    let other = format!("{}_other", env.database);
    let dir = std::env::temp_dir().join(format!("finapp-dotenv-{}", &env.database));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.vars();
    let var = |name: &str| vars.iter().find(|(k, _)| *k == name).unwrap().1.clone();
    let run = |dotenv: String, database: Option<String>| {
        std::fs::write(dir.join(".env"), dotenv).unwrap();
        let mut command = Command::new(function_binary("finapp-admin"));
        command
            .arg("seed-financing-options")
            .current_dir(&dir)
            .env_clear()
            .env("MONGODB_URI", var("MONGODB_URI"));
        if let Some(database) = database {
            command.env("MONGODB_DATABASE", database);
        }
        Process::spawn(command)
    };
    let secret = format!("JWT_SECRET_KEY={}\n", var("JWT_SECRET_KEY"));

    // Only the file names the database: the file is read.
    let mut seeded = run(format!("{secret}MONGODB_DATABASE={}\n", env.database), None);
    let status = seeded.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{:?}", seeded.output());
    assert_eq!(env.count("financing_options").await, 5);

    // Both name one: the environment wins.
    let other_env = TestEnv {
        database: other.clone(),
        ..TestEnv::new()
    };
    let mut seeded = run(
        format!("{secret}MONGODB_DATABASE={}\n", env.database),
        Some(other.clone()),
    );
    let status = seeded.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{:?}", seeded.output());
    assert_eq!(other_env.count("financing_options").await, 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dot_env_example_documents_every_variable_the_code_reads() {
    let root = finapp_tests::workspace_root();
    let example = std::fs::read_to_string(root.join(".env.example")).unwrap();
    let documented = |name: &str| example.contains(&format!("# {name}="));
    let mut read = std::collections::BTreeSet::new();
    let pattern = ["get(\"", "var(\"", "var_os(\"", "&get, \""];
    for dir in ["shared/src", "admin/src", "functions", "scripts"] {
        for file in walk(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let rust = file.extension().is_some_and(|e| e == "rs");
            for start in pattern.iter().filter(|_| rust) {
                for piece in text.split(start).skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                        .collect();
                    if name.len() > 2 && piece[name.len()..].starts_with('"') {
                        read.insert(name);
                    }
                }
            }
            // The scripts' own settings: ${FINAPP_...:-default}.
            for piece in text.split("${FINAPP_").skip(1) {
                let rest: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                read.insert(format!("FINAPP_{rest}"));
            }
        }
    }
    read.remove("AWS_LAMBDA_RUNTIME_API"); // set by Lambda itself, never by a user
    let missing: Vec<_> = read.iter().filter(|name| !documented(name)).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    assert!(read.contains("JWT_SECRET_KEY") && read.contains("FINAPP_STATE_DIR"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("rs" | "sh")) {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_dev_script_reads_dot_env_under_the_environment() {
    let dir = std::env::temp_dir().join(format!("finapp-devenv-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "# a comment\nFROM_FILE=\"file value\"\nBOTH=file\nexport EXPORTED=yes\n",
    )
    .unwrap();
    let script = finapp_tests::workspace_root().join("scripts/dotenv.sh");
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && load_dotenv .env && printf '%s|%s|%s' \"$FROM_FILE\" \"$BOTH\" \"$EXPORTED\"",
            script.display()
        ))
        .current_dir(&dir)
        .env("BOTH", "environment")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "file value|environment|yes"
    );
}
