//! Printing conventions shared by every subcommand.

/// Restore the default SIGPIPE action so `vasticlaude ... | head` ends quietly, as other Unix
/// tools do, instead of panicking on a broken pipe.
#[allow(unsafe_code)]
pub fn reset_sigpipe() {
    // SAFETY: setting a signal disposition to its default at startup, before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let s = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// Exit code for an error: 2 for bad input, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|c| c.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// Bad input from the user (as opposed to a failure while doing the work).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
