#[tokio::main]
async fn main() -> std::process::ExitCode {
    finapp_shared::run(
        "log-financing-options-visit",
        log_financing_options_visit::router,
    )
    .await
}
