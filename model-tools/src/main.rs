fn main() {
    eprintln!("flexserve-model: not built yet");
    std::process::exit(2);
}
