#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("dashboard-info", dashboard_info::router).await
}
