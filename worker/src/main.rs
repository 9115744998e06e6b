#[tokio::main]
async fn main() {
    autokey_shared::config::load_dotenv();
    let cli: autokey_worker::cli::Cli = autokey_shared::config::parse_args();
    std::process::exit(autokey_worker::cli::run(cli).await);
}
