#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run("select-financing-option", select_financing_option::router).await
}
