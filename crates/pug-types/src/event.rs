//! Event reasons: the short machine-readable word every line of a tenant's audit log starts with.
//!
//! Owns: the one list of reasons pug records ([`EventReason`]) and their exact spelling, which
//! the API returns (`Event::reason`) and scripts and tests compare. A new reason is a new variant
//! here, never a string literal at the call site.
//!
//! Must not: change a spelling (it is part of the API), or hold the event's message (the
//! recorder writes that, redacted).

/// Why an event was recorded. `as_str()` (and `Display`) is the reason as stored and returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// The tenant was created (store, with the tenant).
    Created,
    /// Its spec was changed through the API.
    SpecUpdated,
    /// An upgrade to a newer Grafana was asked for.
    UpgradeRequested,
    /// Suspending it was asked for.
    Suspend,
    /// Resuming it was asked for.
    Resume,
    /// Deleting it was asked for.
    DeleteRequested,
    /// Its PostgreSQL database and role were created.
    DatabaseCreated,
    /// Its PostgreSQL database and role were dropped (deletion with `--purge`).
    DatabaseDropped,
    /// A replica was started (it was missing, or exited while running an older spec).
    InstanceStarted,
    /// A replica that exited by itself was started again.
    InstanceRestarted,
    /// A running replica was replaced by one with the new spec (rolling replacement).
    InstanceReplaced,
    /// A replica beyond the desired count was removed.
    ReplicaRemoved,
    /// An upgrade that crash-looped or never got healthy was put back to the version that ran.
    UpgradeRolledBack,
    /// The observed phase changed.
    PhaseChanged,
    /// Its instances were stopped on request; data kept.
    Suspended,
    /// Its instances were stopped and its data archived.
    Deleted,
    /// Its record was removed from the store (the last event of a deleted tenant).
    Removed,
    /// An instance that belonged to no tenant in the store was removed.
    OrphanRemoved,
    /// Its instances were stopped because it was idle longer than its idle timeout; data kept.
    Slept,
    /// It woke from sleep and is ready again (the message says what woke it and how long it took).
    Woke,
}

impl EventReason {
    /// Every reason, in the order above.
    pub const ALL: [EventReason; 20] = [
        EventReason::Created,
        EventReason::SpecUpdated,
        EventReason::UpgradeRequested,
        EventReason::Suspend,
        EventReason::Resume,
        EventReason::DeleteRequested,
        EventReason::DatabaseCreated,
        EventReason::DatabaseDropped,
        EventReason::InstanceStarted,
        EventReason::InstanceRestarted,
        EventReason::InstanceReplaced,
        EventReason::ReplicaRemoved,
        EventReason::UpgradeRolledBack,
        EventReason::PhaseChanged,
        EventReason::Suspended,
        EventReason::Deleted,
        EventReason::Removed,
        EventReason::OrphanRemoved,
        EventReason::Slept,
        EventReason::Woke,
    ];

    /// The reason as stored in the event log and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Created => "Created",
            EventReason::SpecUpdated => "SpecUpdated",
            EventReason::UpgradeRequested => "UpgradeRequested",
            EventReason::Suspend => "Suspend",
            EventReason::Resume => "Resume",
            EventReason::DeleteRequested => "DeleteRequested",
            EventReason::DatabaseCreated => "DatabaseCreated",
            EventReason::DatabaseDropped => "DatabaseDropped",
            EventReason::InstanceStarted => "InstanceStarted",
            EventReason::InstanceRestarted => "InstanceRestarted",
            EventReason::InstanceReplaced => "InstanceReplaced",
            EventReason::ReplicaRemoved => "ReplicaRemoved",
            EventReason::UpgradeRolledBack => "UpgradeRolledBack",
            EventReason::PhaseChanged => "PhaseChanged",
            EventReason::Suspended => "Suspended",
            EventReason::Deleted => "Deleted",
            EventReason::Removed => "Removed",
            EventReason::OrphanRemoved => "OrphanRemoved",
            EventReason::Slept => "Slept",
            EventReason::Woke => "Woke",
        }
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::EventReason::{self, *};

    /// The spellings the API has always returned; changing one breaks its users.
    #[test]
    fn each_reason_is_spelled_as_the_api_returns_it() {
        let table: [(EventReason, &str); 20] = [
            (Created, "Created"),
            (SpecUpdated, "SpecUpdated"),
            (UpgradeRequested, "UpgradeRequested"),
            (Suspend, "Suspend"),
            (Resume, "Resume"),
            (DeleteRequested, "DeleteRequested"),
            (DatabaseCreated, "DatabaseCreated"),
            (DatabaseDropped, "DatabaseDropped"),
            (InstanceStarted, "InstanceStarted"),
            (InstanceRestarted, "InstanceRestarted"),
            (InstanceReplaced, "InstanceReplaced"),
            (ReplicaRemoved, "ReplicaRemoved"),
            (UpgradeRolledBack, "UpgradeRolledBack"),
            (PhaseChanged, "PhaseChanged"),
            (Suspended, "Suspended"),
            (Deleted, "Deleted"),
            (Removed, "Removed"),
            (OrphanRemoved, "OrphanRemoved"),
            (Slept, "Slept"),
            (Woke, "Woke"),
        ];
        for (reason, text) in table {
            assert_eq!(reason.as_str(), text);
            assert_eq!(reason.to_string(), text);
        }
        assert_eq!(
            EventReason::ALL.to_vec(),
            table.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            "ALL lists every reason once, in order"
        );
    }
}
