//! The MLS rules every Conclave client runs: the admission policy on every commit (sent or
//! received), and the commit options that keep commits small at scale.

use mls_rs::group::{GroupContext, Roster};
use mls_rs::mls_rules::{
    CommitDirection, CommitOptions, CommitSource, EncryptionOptions, ProposalBundle,
};

use mls_rs::MlsRules;

use crate::crypto::RoomCipherSuite;
use crate::policy::{check_commit, drop_forbidden_references, policy_of, PolicyViolation};

/// Rules shared by all members. Stateless: the policy is read from the group context, so it is
/// the same on every member.
#[derive(Clone, Copy, Debug)]
pub struct ConclaveRules {
    /// `false` only in a deliberately broken client (adversarial tests model a malicious
    /// member with it); honest clients and the delivery service always enforce.
    pub enforce: bool,
}

impl Default for ConclaveRules {
    fn default() -> Self {
        ConclaveRules { enforce: true }
    }
}

impl MlsRules for ConclaveRules {
    type Error = PolicyViolation;

    fn filter_proposals(
        &self,
        direction: CommitDirection,
        source: CommitSource,
        _current_roster: &Roster,
        current_context: &GroupContext,
        mut proposals: ProposalBundle,
    ) -> Result<ProposalBundle, Self::Error> {
        if !self.enforce {
            return Ok(proposals);
        }
        let suite = RoomCipherSuite::from_mls(current_context.cipher_suite)
            .ok_or(PolicyViolation::UnsupportedSuite)?;
        let policy = policy_of(&current_context.extensions)?;
        if direction == CommitDirection::Send {
            drop_forbidden_references(
                suite,
                &policy,
                &current_context.group_id,
                &source,
                &mut proposals,
            )?;
        }
        // Both directions: our own client never builds a commit the others would reject, and
        // never applies one that breaks the policy.
        check_commit(
            suite,
            &policy,
            &current_context.group_id,
            &source,
            &proposals,
        )?;
        Ok(proposals)
    }

    fn commit_options(
        &self,
        _new_roster: &Roster,
        _new_context: &GroupContext,
        _proposals: &ProposalBundle,
    ) -> Result<CommitOptions, Self::Error> {
        Ok(CommitOptions::new()
            // Every commit carries a path: fresh entropy (post-compromise security) and a
            // filled tree, which keeps later commits O(log n).
            .with_path_required(true)
            // The ratchet tree goes out of band (the DS serves it; the joiner checks it
            // against the tree hash in the signed GroupInfo): 191 KB at 1,000 members.
            .with_ratchet_tree_extension(false)
            .with_always_out_of_band_ratchet_tree(true)
            .with_single_welcome_message(true)
            .with_allow_external_commit(false))
    }

    fn encryption_options(
        &self,
        _current_roster: &Roster,
        _current_context: &GroupContext,
    ) -> Result<EncryptionOptions, Self::Error> {
        // Handshake messages stay public messages so the DS can validate and order them with
        // the public group view; application messages are always private.
        Ok(EncryptionOptions::default())
    }
}
