#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run(select_financing_option::router).await
}
