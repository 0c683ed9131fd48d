#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("login", login::router).await
}
