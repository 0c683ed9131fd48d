#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("apply", apply::router).await
}
