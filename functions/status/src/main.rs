#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("status", status::router).await
}
