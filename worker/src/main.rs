use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = autokey_worker::cli::Cli::parse();
    std::process::exit(autokey_worker::cli::run(cli).await);
}
