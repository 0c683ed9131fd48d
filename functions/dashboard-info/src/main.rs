#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run(dashboard_info::router).await
}
