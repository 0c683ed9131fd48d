#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("analytics", analytics::router).await
}
