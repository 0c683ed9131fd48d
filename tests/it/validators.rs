//! The deployment validators catch what they are there to catch: each one runs
//! on a copy of the repository's files, first untouched (it must pass, so the
//! copy is complete), then with one deliberate break (it must fail, naming the
//! check that caught it).

use std::path::{Path, PathBuf};
use std::process::Command;

use finapp_tests::workspace_root;

/// A throw-away copy of the given files and folders of the repository.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn of(paths: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("finapp-validate-{}", uuid::Uuid::new_v4()));
        for path in paths {
            copy_recursively(&workspace_root().join(path), &dir.join(path));
        }
        Self { dir }
    }

    /// Replaces `from` by `to` in one file; `from` must be there, so a break
    /// that silently applies to nothing cannot pass for a caught one.
    fn break_file(&self, file: &str, from: &str, to: &str) {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} does not contain {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// Runs a validator script on this copy: (passed, the names of the failed checks).
    fn validate(&self, script: &str) -> (bool, String) {
        let output = Command::new("bash")
            .arg(workspace_root().join("scripts").join(script))
            .arg(&self.dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        if !output.status.success() {
            eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        }
        let failed = last
            .split_once("FAILED: ")
            .map(|(_, names)| names.to_owned());
        (output.status.success(), failed.unwrap_or_default())
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn copy_recursively(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_recursively(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The repository-relative paths of every function's Cargo.toml: both
/// validators compare the deployment files with the functions that exist.
fn function_manifests() -> Vec<String> {
    let mut manifests: Vec<String> = std::fs::read_dir(workspace_root().join("functions"))
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            format!("functions/{name}/Cargo.toml")
        })
        .collect();
    manifests.sort();
    manifests
}

fn k8s_files() -> Vec<String> {
    // routes.toml and every file scripts/routes.py generates from it.
    let mut files: Vec<String> = [
        "infra",
        "Dockerfile",
        "routes.toml",
        "Cargo.toml",
        "template.yaml",
        "README.md",
        "docs/api.md",
    ]
    .map(String::from)
    .to_vec();
    files.extend(function_manifests());
    files
}

/// (file, text, replacement, the check that must catch it)
const K8S_BREAKS: &[(&str, &str, &str, &str)] = &[
    // A misspelt field is silently dropped by a lenient apply; --strict must refuse it.
    (
        "infra/k8s/base/function/function.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFileSystem: true",
        "kubernetes-validate",
    ),
    // A pod on the node's network is refused by the restricted (even baseline) profile.
    (
        "infra/k8s/base/function/function.yaml",
        "automountServiceAccountToken: false",
        "hostNetwork: true",
        "Pod Security restricted",
    ),
    // Pods no NetworkPolicy covers: kube-score refuses them.
    (
        "infra/k8s/base/common/kustomization.yaml",
        "  - networkpolicy.yaml\n",
        "",
        "kube-score",
    ),
    // A route of routes.toml that no longer reaches its function.
    (
        "infra/k8s/base/ingress/ingress.yaml",
        "- path: /login",
        "- path: /log-in",
        "check_k8s_routes.py",
    ),
    // The metrics port on the Service would let the ingress route /metrics.
    (
        "infra/k8s/base/function/function.yaml",
        "      targetPort: http # containerPort 8080\n      protocol: TCP\n",
        "      targetPort: http # containerPort 8080\n      protocol: TCP\n    - name: metrics\n      port: 9464\n      targetPort: metrics\n",
        "check_k8s_routes.py",
    ),
    // An HTTPRoute that no longer says what routes.toml says (a method here).
    (
        "infra/k8s/base/gateway/httproutes.yaml",
        "        - method: PUT",
        "        - method: POST",
        "check_k8s_routes.py",
    ),
    // A field the Gateway API's CRD does not have, which an API server would prune.
    (
        "infra/k8s/base/gateway/gateway.yaml",
        "      protocol: HTTPS\n",
        "      protocol: HTTPS\n      proto: HTTPS\n",
        "Gateway API CRDs",
    ),
    // Readiness on the database again: one blip would empty every Service.
    (
        "infra/k8s/base/function/function.yaml",
        "          readinessProbe:\n            tcpSocket:\n              port: http\n",
        "          readinessProbe:\n            httpGet:\n              path: /readyz\n              port: http\n",
        "check_k8s_routes.py",
    ),
    // A ConfigMap without its hash: a config change would roll no pod.
    (
        "infra/k8s/base/config/kustomization.yaml",
        "    options:\n",
        "    options:\n      disableNameSuffixHash: true\n",
        "pod template",
    ),
    // Pods Prometheus would not discover.
    (
        "infra/k8s/base/function/function.yaml",
        "        prometheus.io/scrape: \"true\"\n",
        "",
        "check_k8s_routes.py",
    ),
    // Alerting rules that do not parse, or watch a metric nobody records.
    (
        "infra/k8s/alerts.yaml",
        "        for: 5m\n        labels:\n          severity: warning",
        "        for: 5m\n       labels:\n          severity: warning",
        "check_alerts.py",
    ),
    (
        "infra/k8s/alerts.yaml",
        "max(finapp_outbox_oldest_age_seconds)",
        "max(finapp_outbox_oldest_age)",
        "check_alerts.py",
    ),
    // routes.toml changed without regenerating what follows from it.
    (
        "routes.toml",
        "routes = [\"POST /login\"]",
        "routes = [\"POST /sign-in\"]",
        "routes.py",
    ),
    // A Secret in prod would overwrite the real one at every apply.
    (
        "infra/k8s/overlays/prod/kustomization.yaml",
        "resources:\n  - ../../base\n",
        "resources:\n  - ../../base\nsecretGenerator:\n  - name: finapp-secrets\n    literals:\n      - JWT_SECRET_KEY=placeholder\n",
        "never a Secret",
    ),
    // ADD where COPY is meant (ADD also fetches URLs and unpacks archives).
    (
        "Dockerfile",
        "COPY function /usr/local/bin/finapp-function",
        "ADD function /usr/local/bin/finapp-function",
        "hadolint",
    ),
];

#[test]
fn the_k8s_and_docker_validator_fails_on_broken_copies() {
    assert_each_break_is_caught("validate-k8s.sh", &k8s_files(), K8S_BREAKS);
}

/// `script` passes on an untouched copy of `files`, and fails on a copy with
/// each break, naming the check the break is meant for.
fn assert_each_break_is_caught(
    script: &str,
    files: &[String],
    breaks: &[(&str, &str, &str, &str)],
) {
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let (passed, failed) = Copy::of(&files).validate(script);
    assert!(passed, "the untouched copy failed: {failed}");
    for (file, from, to, check) in breaks {
        let copy = Copy::of(&files);
        copy.break_file(file, from, to);
        let (passed, failed) = copy.validate(script);
        assert!(!passed, "{file}: {from:?} -> {to:?} passed validation");
        assert!(
            failed.contains(check),
            "{file}: {check} did not fail, only {failed}"
        );
    }
}

fn aws_files() -> Vec<String> {
    let mut files: Vec<String> = [
        "template.yaml",
        "samconfig.toml",
        ".github",
        "Cargo.toml",
        "routes.toml",
    ]
    .map(String::from)
    .to_vec();
    files.extend(function_manifests());
    files
}

const AWS_BREAKS: &[(&str, &str, &str, &str)] = &[
    // SAM's translator: an HttpApi event on an API that does not exist.
    (
        "template.yaml",
        "ApiId: !Ref FinAppHttpApi",
        "ApiId: !Ref NoSuchApi",
        "sam validate (SAM translation)",
    ),
    // cfn-lint (alone and through sam validate --lint): more memory than
    // Lambda allows, which SAM's translation passes through unchecked.
    (
        "template.yaml",
        "MemorySize: 128",
        "MemorySize: 99999",
        "cfn-lint",
    ),
    // actionlint: a runner label GitHub does not have.
    (
        ".github/workflows/ci.yml",
        "runs-on: ubuntu-latest",
        "runs-on: ubuntu-latset",
        "actionlint",
    ),
    // The bundle's own rules: a production path that differs from routes.toml.
    (
        "template.yaml",
        "Path: /login",
        "Path: /log-in",
        "bundle checks",
    ),
    // ... a reserved concurrency that differs from routes.toml,
    (
        "template.yaml",
        "ReservedConcurrentExecutions: 40 # routes.toml",
        "ReservedConcurrentExecutions: 400 # routes.toml",
        "bundle checks",
    ),
    // ... a canary with one rollback alarm left,
    (
        "template.yaml",
        "          - !Ref LoginDurationAlarm\n          - !Ref LoginHttp5xxAlarm\n",
        "",
        "bundle checks",
    ),
    // ... no X-Ray tracing,
    (
        "template.yaml",
        "    Tracing: Active\n",
        "",
        "bundle checks",
    ),
    // ... and an outbox relay schedule that never fires.
    (
        "template.yaml",
        "Enabled: true",
        "Enabled: false",
        "bundle checks",
    ),
];

#[test]
fn the_aws_and_workflow_validator_fails_on_broken_copies() {
    assert_each_break_is_caught("validate-aws.sh", &aws_files(), AWS_BREAKS);
}
