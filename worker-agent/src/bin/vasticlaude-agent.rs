//! `vasticlaude-agent`: the program copied onto every instance. See [`worker_agent::cli`].

fn main() -> std::process::ExitCode {
    worker_agent::cli::main_with(std::env::args().skip(1).collect())
}
