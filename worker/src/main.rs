fn main() {
    eprintln!("autokey-worker: not implemented yet");
    std::process::exit(1);
}
