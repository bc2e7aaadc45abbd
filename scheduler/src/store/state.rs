//! The lifecycles, as Rust enums stored as lower-case text.
//!
//! Job: `queued → placed → starting → running → {succeeded | failed | cancelled}`, and
//! `running → interrupted → queued` (the next attempt resumes from its checkpoint). A claim moves
//! `queued → placed`; the reconciler moves `placed → starting → running` under the job's fence.

use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState {
                        what: $what,
                        value: s.to_string(),
                        expected: vec![$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

/// A state name that is not one of the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {what} state {value:?} (expected one of: {expected})")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
    pub expected: String,
}

text_enum!(
    /// Where a job is in its lifecycle.
    JobState, "job" {
        Queued => "queued",
        Placed => "placed",
        Starting => "starting",
        Running => "running",
        Interrupted => "interrupted",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl JobState {
    /// Held under a lease by a scheduler (claimed and not yet finished).
    pub const LEASED: &'static [JobState] =
        &[JobState::Placed, JobState::Starting, JobState::Running];

    /// No further transition happens without a user's `retry`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Held under a lease (see [`JobState::LEASED`]).
    pub fn is_leased(self) -> bool {
        Self::LEASED.contains(&self)
    }
}

text_enum!(
    /// How one attempt ended (or that it has not yet).
    AttemptState, "attempt" {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Interrupted => "interrupted",
        Lost => "lost",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// Our view of a rented instance, mapped from Vast's states by the reconciler.
    InstanceState, "instance" {
        Requested => "requested",
        Booting => "booting",
        Ready => "ready",
        AgentUp => "agent_up",
        Busy => "busy",
        Idle => "idle",
        Paused => "paused",
        Failed => "failed",
        Destroying => "destroying",
        Gone => "gone",
    }
);

text_enum!(
    /// Whether a job may run on an interruptible (bid) instance.
    Interruptible, "interruptible" {
        Auto => "auto",
        Never => "never",
        Always => "always",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), *s);
        }
        for s in InstanceState::ALL {
            assert_eq!(s.as_str().parse::<InstanceState>().unwrap(), *s);
        }
        let err = "runing".parse::<JobState>().unwrap_err().to_string();
        assert!(
            err.contains("\"runing\"") && err.contains("running"),
            "{err}"
        );
    }
}
