//! Workspace-level end-to-end tests, one binary to keep link times down.

mod dst;
mod offers_must_show;
mod sim_serve;
