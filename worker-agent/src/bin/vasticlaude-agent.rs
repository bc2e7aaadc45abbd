fn main() {
    eprintln!("vasticlaude-agent: not built yet");
    std::process::exit(1);
}
