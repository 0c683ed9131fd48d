//! The admin routes and the `finapp-admin` tool.

use std::{
    io::{Read as _, Write as _},
    process::{Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use finapp_tests::{
    FunctionProcess, TestApp, TestEnv, admin_tool, all_functions, function_binary, send, sign_up,
    wait_for,
};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use nix::{
    pty::openpty,
    sys::termios::{LocalFlags, tcgetattr},
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

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

/// `finapp-admin ARGS` with exactly `vars` as its environment and `stdin` as
/// its input, waited for up to 30 s.
async fn run_admin(args: &[&str], vars: &[(&'static str, String)], stdin: &str) -> Output {
    let mut command = Command::new(function_binary("finapp-admin"));
    command
        .args(args)
        .env_clear()
        .envs(vars.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("finapp-admin starts");
    let mut input = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut input, stdin.as_bytes())
        .await
        .unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("finapp-admin exits within 30 s")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn finapp_admin_help_describes_each_command_and_exits_0_without_configuration() {
    let help = run_admin(&["--help"], &[], "").await;
    let listing = text(&help.stdout);
    assert!(help.status.success(), "{help:?}");
    for (command, summary) in [
        ("create-admin", "Creates USERNAME as an admin"),
        ("seed-financing-options", "five financing options"),
        ("doctor", "would stop or surprise the bundle"),
        ("migrate ", "Hashes plaintext passwords"),
        ("migrate-queues", "non-durable queues to durable ones"),
        ("rebuild-analytics", "Rebuilds the analytics counters"),
        ("unlock", "failed-login window"),
    ] {
        let line = listing
            .lines()
            .find(|line| line.trim_start().starts_with(command))
            .unwrap_or_else(|| panic!("--help lists no {command}:\n{listing}"));
        assert!(line.contains(summary), "{line}");

        // Each command's own help: its summary, its usage and more.
        let command = command.trim_end();
        let own = run_admin(&[command, "--help"], &[], "").await;
        let own_text = text(&own.stdout);
        assert!(own.status.success(), "{command} --help: {own:?}");
        assert!(
            own_text.starts_with(summary) || own_text.contains(summary),
            "{command} --help:\n{own_text}"
        );
        assert!(
            own_text.contains(&format!("Usage: finapp-admin {command}")),
            "{own_text}"
        );
    }
    let doctor = run_admin(&["doctor", "--help"], &[], "").await;
    let doctor_text = text(&doctor.stdout);
    assert!(doctor.status.success(), "{doctor:?}");
    for severity in ["BLOCKING", "FIXABLE", "NOTE"] {
        assert!(doctor_text.contains(severity), "{doctor_text}");
    }

    // A mistyped command is refused with the usage, changing nothing.
    let unknown = run_admin(&["create-admins", "alice"], &[], "").await;
    assert!(!unknown.status.success());
    assert!(unknown.stdout.is_empty(), "{unknown:?}");
    assert!(
        text(&unknown.stderr).contains("Usage: finapp-admin <COMMAND>"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn finapp_admin_version_is_its_crate_version() {
    let manifest = include_str!("../../admin/Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("admin/Cargo.toml names a version");
    let output = run_admin(&["--version"], &[], "").await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(text(&output.stdout), format!("finapp-admin {version}\n"));
}

#[tokio::test]
async fn finapp_admin_needs_no_jwt_secret_key_and_ignores_a_weak_one() {
    let env = TestEnv::new().with_var("LOGIN_MAX_FAILURES", 2);
    sign_up(&env, "locked_out", "right_password").await;
    let login = FunctionProcess::start("login", &env).await;
    let attempt = |password: &'static str| {
        let url = format!("{}/login", login.base_url);
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"username": "locked_out", "password": password}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for expected in [401, 401, 429] {
        assert_eq!(attempt("wrong_password").await, expected);
    }

    let without_key: Vec<(&'static str, String)> = env
        .vars()
        .into_iter()
        .filter(|(name, _)| *name != "JWT_SECRET_KEY")
        .collect();
    let unlocked = run_admin(&["unlock", "locked_out"], &without_key, "").await;
    assert!(unlocked.status.success(), "{unlocked:?}");
    assert_eq!(text(&unlocked.stdout), "locked_out may log in again\n");
    assert_eq!(attempt("right_password").await, 200);

    // A key the functions would refuse (too short) does not stop it either.
    let weak_key: Vec<(&'static str, String)> = without_key
        .iter()
        .cloned()
        .chain([("JWT_SECRET_KEY", "short".to_owned())])
        .collect();
    for vars in [&without_key, &weak_key] {
        for (args, stdin, said) in [
            (&["doctor"][..], "", format!("database {}", env.database)),
            (
                &["seed-financing-options"][..],
                "",
                "financing options seeded".into(),
            ),
            (&["migrate-queues"][..], "", "every queue already".into()),
            (
                &["create-admin", "keyless_admin"][..],
                "keyless_password\n",
                "keyless_admin is an admin".into(),
            ),
        ] {
            let output = run_admin(args, vars, stdin).await;
            assert!(output.status.success(), "{args:?}: {output:?}");
            let printed = text(&output.stdout);
            // doctor lists findings (users without role, say) or says there are none.
            assert!(
                printed.contains(&said) || (args == ["doctor"] && !printed.is_empty()),
                "{args:?}: {printed}"
            );
        }
    }
    assert_eq!(env.count("financing_options").await, 5);
}

/// The bytes a terminal shows, read from a pseudo-terminal's master side.
struct Terminal {
    master: std::fs::File,
    shown: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Terminal {
    fn shown(&self) -> String {
        text(&self.shown.lock().unwrap())
    }

    /// Waits until the terminal shows `prompt` a `nth` time with echo off, then types `line`.
    async fn answer(&mut self, prompt: &str, nth: usize, line: &str) {
        wait_for(
            &format!("prompt {nth} {prompt:?} with echo off"),
            Duration::from_secs(30),
            || async {
                let echo = tcgetattr(&self.master)
                    .unwrap()
                    .local_flags
                    .contains(LocalFlags::ECHO);
                (self.shown().matches(prompt).count() == nth && !echo).then_some(())
            },
        )
        .await;
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }
}

/// `finapp-admin create-admin USERNAME` with a pseudo-terminal as its stdin,
/// stdout and stderr, answering its two prompts with `first` and `second`.
/// Returns whether it succeeded and what the terminal showed.
async fn create_admin_at_a_terminal(
    env: &TestEnv,
    username: &str,
    first: &str,
    second: &str,
) -> (bool, String) {
    let pty = openpty(None, None).unwrap();
    let mut command = Command::new(function_binary("finapp-admin"));
    command
        .args(["create-admin", username])
        .envs(env.vars())
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave))
        .kill_on_drop(true);
    let mut child = command.spawn().expect("finapp-admin starts");
    // Our copies of the terminal's other side close, so that reading ends when the child exits.
    drop(command);
    let master = std::fs::File::from(pty.master);
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let mut master = master.try_clone().unwrap();
        let shown = shown.clone();
        move || {
            let mut buffer = [0; 1024];
            // EIO once no process holds the other side.
            while let Ok(read @ 1..) = master.read(&mut buffer) {
                shown.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        }
    });
    let mut terminal = Terminal {
        master,
        shown,
        reader,
    };
    let prompt = format!("Password for {username}: ");
    terminal.answer(&prompt, 1, first).await;
    terminal.answer("Same password again: ", 1, second).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("finapp-admin exits within 30 s")
        .unwrap();
    wait_for("the terminal to close", Duration::from_secs(10), || async {
        terminal.reader.is_finished().then_some(())
    })
    .await;
    (status.success(), terminal.shown())
}

/// `username`'s stored bcrypt hash, once it is an admin.
async fn stored_admin_hash(env: &TestEnv, username: &str) -> String {
    let user = env
        .db()
        .await
        .collection::<Document>("users")
        .find_one(doc! {"username": username})
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{username} stored"));
    assert_eq!(user.get_str("role").unwrap(), "admin");
    match user.get("password") {
        Some(Bson::String(hash)) => hash.clone(),
        Some(Bson::Binary(binary)) => String::from_utf8(binary.bytes.clone()).unwrap(),
        other => panic!("password stored as {other:?}"),
    }
}

#[tokio::test]
async fn create_admin_at_a_terminal_asks_twice_without_echo() {
    let env = TestEnv::new();
    let (ok, shown) =
        create_admin_at_a_terminal(&env, "tty_admin", "typed_password", "typed_password").await;
    assert!(ok, "{shown}");
    assert!(shown.contains("tty_admin is an admin"), "{shown}");
    assert!(!shown.contains("typed_password"), "echoed: {shown}");
    let hash = stored_admin_hash(&env, "tty_admin").await;
    assert!(bcrypt::verify("typed_password", &hash).unwrap());

    // Two different answers change nothing.
    let (ok, shown) =
        create_admin_at_a_terminal(&env, "tty_admin", "other_password", "0ther_password").await;
    assert!(!ok, "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    assert!(!shown.contains("ther_password"), "echoed: {shown}");
    assert_eq!(stored_admin_hash(&env, "tty_admin").await, hash);
}
