//! The vasticlaude agent protocol (skeleton; the agent helper fills it in).
