#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("signup", signup::router).await
}
