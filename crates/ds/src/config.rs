//! The delivery service's tunables, its outputs and its counters.

use std::time::Duration;

use conclave_proto::ServerMsg;

use crate::ConnId;

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct DsConfig {
    /// How long knocks are collected before a commit is requested (one commit adds them all),
    /// in a small room.
    pub batch_window: Duration,
    /// Added to the batching window per member: every epoch costs each member a commit to
    /// apply and each video sender a keyframe per layer, so a large room changes epochs
    /// less often (1,000 members: at most one epoch a second while people pour in).
    pub batch_per_member: Duration,
    /// Upper bound of the batching window.
    pub max_batch_window: Duration,
    /// How long the designated committer has before another member is asked.
    pub commit_timeout: Duration,
    /// How long a member's connection may stay gone before the server proposes its removal.
    pub remove_after: Duration,
    /// Most members plus knocks per room.
    pub max_room_size: usize,
    /// How long a connection asked to create a room's group has to upload it before the next
    /// connection is asked instead.
    pub create_timeout: Duration,
    /// Most KeyPackage bytes one commit request carries (knocks beyond it wait for the next
    /// epoch), so that the commit and Welcome stay far below the signaling message limit.
    pub max_request_bytes: usize,
}

impl DsConfig {
    /// The batching window of a room with `members` connections.
    pub fn window_for(&self, members: usize) -> Duration {
        let per = self
            .batch_per_member
            .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX));
        self.batch_window
            .max(per)
            .min(self.max_batch_window.max(self.batch_window))
    }
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            batch_window: Duration::from_millis(50),
            batch_per_member: Duration::from_millis(1),
            max_batch_window: Duration::from_secs(1),
            commit_timeout: Duration::from_secs(5),
            remove_after: Duration::from_secs(10),
            max_room_size: 1000,
            create_timeout: Duration::from_secs(10),
            max_request_bytes: 1 << 20,
        }
    }
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `msg` on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ServerMsg,
    },
    /// `conn` became a member of its room's group (`member: true`) or stopped being one. The
    /// SFU forwards media to and from a connection only while it is a member: a token holder
    /// that never got in receives no one's ciphertext, levels or timing.
    Membership {
        /// The connection.
        conn: ConnId,
        /// Whether it is a member now.
        member: bool,
    },
    /// Close `conn` (after sending what was queued before).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsStats {
    /// Commits accepted.
    pub commits_accepted: u64,
    /// Commits refused (lost the race or invalid).
    pub commits_rejected: u64,
    /// Removals proposed by the server.
    pub removals_proposed: u64,
    /// Messages refused as malformed or unexpected.
    pub refused: u64,
}
