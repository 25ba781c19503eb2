//! What the agent loop's events look like to a person (one line) and to a machine (one JSON
//! object), so that the command line and a host daemon report rounds alike.

use serde_json::{Value, json};

use crate::run::Event;

impl Event {
    /// The event as one JSON object for VM `vm`; `None` for events reported as errors.
    pub fn to_json(&self, vm: &str) -> Option<Value> {
        Some(match self {
            Event::Answered { round, result } => {
                let mut j = serde_json::to_value(result).ok()?;
                j["round"] = (*round).into();
                j
            }
            Event::RolledBack { round, seq, report } => json!({
                "round": round, "vm": vm, "rolled_back_to": seq,
                "link": report.verified.link.to_hex(),
                "state_root": report.verified.state_root.to_hex(),
            }),
            Event::Reported {
                round,
                request,
                seq,
                verdict,
            } => json!({
                "round": round, "vm": vm, "snapshot_request": request, "seq": seq, "verdict": verdict,
            }),
            Event::RollbackSkipped { .. } | Event::Failed { .. } | Event::LocateFailed { .. } => {
                return None;
            }
        })
    }

    /// The event as one line for VM `vm`.
    pub fn text(&self, vm: &str) -> String {
        match self {
            Event::Answered { round, result: r } => format!(
                "{vm} round {round}: score {} ({}), {}{}, result {}",
                r.score,
                r.status,
                r.regions_line(),
                if r.alert { ", ALERT" } else { "" },
                r.id
            ),
            Event::RolledBack { round, seq, .. } => format!(
                "{vm} round {round}: rolled back to seq {seq} as the server asked (verified links 0 to {seq}); the guest runs on"
            ),
            Event::Reported {
                round,
                request,
                seq,
                verdict,
            } => format!(
                "{vm} round {round}: snapshot request {request}: the running VM and seq {seq}: {verdict} (signed report sent)"
            ),
            Event::RollbackSkipped { round, seq } => format!(
                "{vm} round {round}: the server asks for a rollback to seq {seq}, but no --store was given"
            ),
            Event::Failed { round, error } => format!("{vm} round {round}: {error}"),
            Event::LocateFailed { round, error } => format!(
                "{vm} round {round}: the result stands, but naming where its regions differ failed: {error}"
            ),
        }
    }
}
