//! What a session hands out: roster lines, the security code, commit bundles, membership
//! changes and what an incoming message was.

use std::fmt;

use crate::Fingerprint;

/// One roster line: who is in the group, as the authenticated MLS tree says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEntry {
    /// Leaf index (stable while the member stays).
    pub leaf: u32,
    /// User id from the credential.
    pub user_id: String,
    /// Display name from the credential.
    pub display_name: String,
    /// Fingerprint of the member's device key.
    pub fingerprint: Fingerprint,
}

/// The meeting security code: identical for every member in an epoch, different on a fork,
/// new on every membership change. Derived from the MLS epoch authenticator.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecurityCode(pub(crate) String);

impl SecurityCode {
    /// Six groups of five digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecurityCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecurityCode({})", self.0)
    }
}

/// What a commit built by this member carries, for the DS.
#[derive(Clone)]
pub struct CommitBundle {
    /// The commit, for every current member (and the DS's public view).
    pub commit: Vec<u8>,
    /// The Welcome for the joiners, if the commit adds anyone.
    pub welcome: Option<Vec<u8>>,
    /// The ratchet tree after the commit, for the DS to serve out of band to joiners; empty
    /// when the commit adds nobody.
    pub ratchet_tree: Vec<u8>,
    /// The epoch the commit creates.
    pub new_epoch: u64,
}

impl fmt::Debug for CommitBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitBundle")
            .field("commit_len", &self.commit.len())
            .field("welcome_len", &self.welcome.as_ref().map(Vec::len))
            .field("ratchet_tree_len", &self.ratchet_tree.len())
            .field("new_epoch", &self.new_epoch)
            .finish()
    }
}

/// A membership change as every member sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochChange {
    /// The new epoch.
    pub epoch: u64,
    /// Leaf of the member who committed.
    pub committer: u32,
    /// Members added by the commit.
    pub added: Vec<RosterEntry>,
    /// Members removed by the commit (as they were before it).
    pub removed: Vec<RosterEntry>,
    /// Whether the commit removed this member: its session is over.
    pub removed_self: bool,
}

impl EpochChange {
    /// Whether the commit changed membership (a self-update does not).
    pub fn changes_membership(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }
}

/// What processing an incoming MLS message produced.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// A commit was applied.
    Commit {
        /// What changed.
        change: EpochChange,
        /// Our own pending commit lost the race and was discarded; rebuild if still needed.
        discarded_own_commit: bool,
    },
    /// A proposal was validated and cached for the next commit.
    Proposal {
        /// `"remove"`, `"self-remove"`, ...
        kind: &'static str,
        /// Leaf the proposal concerns (the one to remove), if any.
        target: Option<u32>,
        /// Whether the server (external sender) sent it.
        from_server: bool,
    },
    /// An application message from a member.
    Application {
        /// Sender's leaf.
        sender: u32,
        /// Decrypted payload.
        data: Vec<u8>,
    },
}
