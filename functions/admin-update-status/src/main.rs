#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("admin-update-status", admin_update_status::router).await
}
