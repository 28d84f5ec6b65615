fn main() {
    eprintln!("nodus-bridge: not built yet");
    std::process::exit(1);
}
