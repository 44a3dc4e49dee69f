fn main() {
    eprintln!("flexserve: not built yet");
    std::process::exit(2);
}
