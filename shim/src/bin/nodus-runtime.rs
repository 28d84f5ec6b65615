fn main() {
    eprintln!("nodus-runtime: not built yet");
    std::process::exit(1);
}
