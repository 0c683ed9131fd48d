#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("update-status", update_status::router).await
}
