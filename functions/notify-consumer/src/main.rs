#[tokio::main]
async fn main() -> std::process::ExitCode {
    notify_consumer::main().await
}
