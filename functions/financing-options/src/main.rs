#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("financing-options", financing_options::router).await
}
