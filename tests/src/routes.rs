//! routes.toml, the one route table, as the tests read it: through
//! `scripts/routes.py --json`, so the tests and the generator cannot parse it
//! two different ways.

use serde::Deserialize;

use crate::workspace_root;

#[derive(Debug, Clone, Deserialize)]
pub struct Function {
    pub name: String,
    /// anyone | user | admin | event-triggered
    pub who: String,
    pub queues: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Route {
    pub function: String,
    pub method: String,
    /// The path as routed, with `{parameters}`.
    pub path: String,
    /// A concrete request path for it.
    pub sample: String,
    pub ingress_path: String,
    pub ingress_path_type: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Table {
    pub functions: Vec<Function>,
    pub routes: Vec<Route>,
}

impl Table {
    /// The committed routes.toml.
    pub fn load() -> Self {
        let output = std::process::Command::new("python3")
            .arg(workspace_root().join("scripts/routes.py"))
            .arg("--json")
            .output()
            .expect("python3 runs scripts/routes.py");
        assert!(
            output.status.success(),
            "scripts/routes.py --json failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("routes.py prints the table as JSON")
    }

    /// The functions with at least one HTTP route.
    pub fn http_functions(&self) -> Vec<&str> {
        self.functions
            .iter()
            .filter(|f| self.routes.iter().any(|r| r.function == f.name))
            .map(|f| f.name.as_str())
            .collect()
    }

    pub fn routes_of<'a>(&'a self, function: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| r.function == function)
    }
}

/// A tool that `scripts/deploy-tools.sh` installs under `.dev/` (the test
/// command runs it first), e.g. `bin/aws-lambda-rie` or `venv-validate/bin/python`.
pub fn deploy_tool(relative: &str) -> std::path::PathBuf {
    let path = workspace_root().join(".dev").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/deploy-tools.sh (scripts/test.sh does)",
        path.display()
    );
    path
}
