//! The Ingress, proven in a real nginx: `scripts/ingress_nginx.py` renders
//! nginx configuration from `infra/k8s/base/ingress/ingress.yaml` the way
//! ingress-nginx treats `Exact` and `Prefix`, Debian's nginx serves it in front
//! of every HTTP function running in plain HTTP mode, and every route of
//! routes.toml is sent through it. Each must reach its own function (the one
//! whose access line carries the request's id); an unknown path, `/healthz`
//! and `/metrics` must get nginx's own 404. The same check must fail on a copy
//! of ingress.yaml with one path changed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use finapp_tests::{
    FunctionProcess, Process, TestEnv, free_port,
    routes::{Table, deploy_tool},
    wait_for, workspace_root,
};
use tokio::process::Command;

const HOST: &str = "finapp.example.com";

/// An nginx serving one Ingress on a port of its own, killed on drop.
struct Nginx {
    _process: Process,
    base_url: String,
    dir: PathBuf,
}

impl Nginx {
    async fn start(ingress: &Path, upstreams: &[(String, String)]) -> Self {
        let dir = std::env::temp_dir().join(format!("finapp-nginx-{}", uuid::Uuid::new_v4()));
        let port = free_port();
        let mut render = std::process::Command::new(deploy_tool("venv-validate/bin/python"));
        render
            .arg(workspace_root().join("scripts/ingress_nginx.py"))
            .arg(ingress)
            .arg("--prefix")
            .arg(&dir)
            .args(["--listen", &port.to_string()]);
        for (service, address) in upstreams {
            render.arg("--upstream").arg(format!("{service}={address}"));
        }
        let rendered = render.output().unwrap();
        assert!(
            rendered.status.success(),
            "ingress_nginx.py failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is installed (scripts/deploy-tools.sh)");
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-e", "stderr"]);
        let process = Process::spawn(command);
        wait_for("nginx to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            _process: process,
            base_url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every HTTP function of routes.toml, each its own process on its own port.
struct Functions {
    table: Table,
    processes: Vec<(String, FunctionProcess)>,
}

impl Functions {
    async fn start(env: &TestEnv) -> Self {
        let table = Table::load();
        let mut processes = Vec::new();
        for name in table.http_functions() {
            let vars = env
                .vars()
                .into_iter()
                .chain([("RUST_LOG", "info,access=debug".to_owned())]);
            processes.push((
                name.to_owned(),
                FunctionProcess::start_with(name, vars).await,
            ));
        }
        Self { table, processes }
    }

    /// (Service name, address) for every function, as the Ingress names them.
    fn upstreams(&self) -> Vec<(String, String)> {
        self.processes
            .iter()
            .map(|(name, process)| {
                let address = process.base_url.trim_start_matches("http://").to_owned();
                (name.clone(), address)
            })
            .collect()
    }

    /// The functions whose access log shows the request `id`.
    fn saw(&self, id: &str) -> Vec<&str> {
        self.processes
            .iter()
            .filter(|(_, p)| p.process.logged(id))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Sends every route of the table through `ingress` in a fresh nginx; returns
/// what went wrong, one line per route or probe.
async fn route_failures(functions: &Functions, ingress: &Path) -> Vec<String> {
    let nginx = Nginx::start(ingress, &functions.upstreams()).await;
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for route in &functions.table.routes {
        let id = format!("nginx-{}", uuid::Uuid::new_v4());
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let response = client
            .request(method, format!("{}{}", nginx.base_url, route.sample))
            .header("Host", HOST)
            .header("x-request-id", &id)
            .header("Content-Type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let json = response.json::<serde_json::Value>().await.is_ok();
        let what = format!("{} {} ({})", route.method, route.path, route.sample);
        if !json {
            failures.push(format!("{what}: {status} from nginx, not from a function"));
            continue;
        }
        // The function logs its access line as it answers; the response is
        // already here, so the line is written or about to be.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut saw = functions.saw(&id);
        while saw.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            saw = functions.saw(&id);
        }
        if saw != [route.function.as_str()] {
            failures.push(format!("{what}: reached {saw:?}, not {}", route.function));
        }
    }
    // /metrics is served only on each pod's metrics port, which no Service
    // exposes; the Ingress must not route it either.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/nope",
        "/update_statusx/a/b",
        "/signup/x",
    ] {
        let id = format!("nginx-{}", uuid::Uuid::new_v4());
        let response = client
            .get(format!("{}{path}", nginx.base_url))
            .header("Host", HOST)
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let json = response.json::<serde_json::Value>().await.is_ok();
        let saw = functions.saw(&id);
        if status != 404 || json || !saw.is_empty() {
            failures.push(format!(
                "GET {path}: {status} (JSON: {json}, reached {saw:?}), expected nginx's own 404"
            ));
        }
    }
    failures
}

#[tokio::test]
async fn every_route_reaches_its_own_function_through_nginx_and_a_changed_path_is_caught() {
    let env = TestEnv::new();
    let functions = Functions::start(&env).await;
    let ingress = workspace_root().join("infra/k8s/base/ingress/ingress.yaml");

    let failures = route_failures(&functions, &ingress).await;
    assert!(
        failures.is_empty(),
        "through nginx:\n{}",
        failures.join("\n")
    );

    // A copy of ingress.yaml with one path changed.
    let broken = std::env::temp_dir().join(format!("finapp-ingress-{}.yaml", env.database));
    let text = std::fs::read_to_string(&ingress).unwrap();
    assert!(text.contains("- path: /login\n"));
    std::fs::write(
        &broken,
        text.replacen("- path: /login\n", "- path: /log-in\n", 1),
    )
    .unwrap();
    let failures = route_failures(&functions, &broken).await;
    let _ = std::fs::remove_file(&broken);
    assert!(
        failures.len() == 1 && failures[0].starts_with("POST /login "),
        "the changed path was not caught as the one failure: {failures:?}"
    );
}
