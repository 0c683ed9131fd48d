#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("admin-applications", admin_applications::router).await
}
