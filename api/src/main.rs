#[tokio::main]
async fn main() {
    autokey_shared::config::load_dotenv();
    let cli: autokey_api::cli::Cli = autokey_shared::config::parse_args();
    std::process::exit(autokey_api::cli::run(cli).await);
}
