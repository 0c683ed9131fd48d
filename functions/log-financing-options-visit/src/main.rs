#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run(log_financing_options_visit::router).await
}
