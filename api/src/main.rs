use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = autokey_api::cli::Cli::parse();
    std::process::exit(autokey_api::cli::run(cli).await);
}
