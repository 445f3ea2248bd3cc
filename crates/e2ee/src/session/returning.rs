//! A lobby host's way back into a group it left: each member keeps the epoch's return secret
//! ([`conclave_mls::HostReturn`]), and a member who is no host commits the host's return with
//! the PSK its KeyPackage names.

use mls_rs::group::proposal::AddProposal;
use mls_rs_codec::MlsEncode;
use zeroize::Zeroizing;

use conclave_mls::{Admission, HostReturn, HOST_RETURN_EXPORTER_LABEL, HOST_RETURN_SECRET_LEN};

use super::{map_mls, parse_message, CommitBundle, Session};
use crate::error::{Error, Result};
use conclave_mls::Timestamp;

/// The [`HostReturn`] ticket a KeyPackage carries, if any.
pub fn return_ticket_of(key_package: &[u8]) -> Result<Option<HostReturn>> {
    let add = AddProposal::try_from(parse_message(key_package)?).map_err(map_mls)?;
    add.key_package_extensions()
        .get_as::<HostReturn>()
        .map_err(|e| Error::MalformedMessage(format!("return ticket: {e}")))
}

impl Session {
    /// This epoch's return secret: only for adversarial tests (a member who helps the server
    /// hands it over).
    #[doc(hidden)]
    pub fn danger_return_secret(&self) -> Result<Vec<u8>> {
        let secret = self
            .group
            .export_secret(HOST_RETURN_EXPORTER_LABEL, b"", HOST_RETURN_SECRET_LEN)
            .map_err(Error::mls)?;
        Ok(secret.as_bytes().to_vec())
    }

    /// Puts a return secret of the caller's choosing in this device's store (the same store
    /// as [`crate::Device::danger_keep_return_secret`]): only for adversarial tests.
    #[doc(hidden)]
    pub fn danger_keep_return_secret(&self, ticket: &HostReturn, secret: Vec<u8>) {
        self.returns.record(
            &ticket.group_id,
            &self.policy.room_id,
            false,
            ticket.epoch,
            Zeroizing::new(secret),
            Vec::new(),
            false,
        );
    }

    /// In a lobby, keeps this epoch's return secret (`restart`: forget the earlier ones, which
    /// someone now in the group never had).
    pub(super) fn keep_return_secret(&self, restart: bool) -> Result<()> {
        if !matches!(self.policy.admission, Admission::Lobby(_)) {
            return Ok(());
        }
        let secret = self
            .group
            .export_secret(HOST_RETURN_EXPORTER_LABEL, b"", HOST_RETURN_SECRET_LEN)
            .map_err(Error::mls)?;
        let me = self
            .group
            .current_member_signing_identity()
            .map_err(Error::mls)?;
        let host = self.policy.is_host(&me.signature_key);
        // A host keeps who was in this epoch (key and credential): a group it returns to may
        // hold no one else.
        let roster = if host {
            self.group
                .roster()
                .members_iter()
                .map(|m| m.signing_identity.mls_encode_to_vec().unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        self.returns.record(
            self.group.group_id(),
            &self.policy.room_id,
            host,
            self.epoch(),
            Zeroizing::new(secret.as_bytes().to_vec()),
            roster,
            restart,
        );
        Ok(())
    }

    /// In a lobby where this member is no host: a commit that adds back a host's device that
    /// knocked with `key_package`, proving with the return PSK its KeyPackage names that the
    /// group is the one the host was in ([`conclave_mls::HostReturn`]). Refused if the
    /// KeyPackage is not a host's, names no epoch of this group, or one whose secret this
    /// member no longer keeps (an add since then: someone now in the group never had it).
    pub fn commit_host_return(
        &mut self,
        key_package: &[u8],
        now: Timestamp,
    ) -> Result<CommitBundle> {
        if self.group.has_pending_commit() {
            return Err(Error::Usage("a commit is already pending"));
        }
        let card = self.read_joiner(key_package, now)?;
        if !matches!(self.policy.admission, Admission::Lobby(_))
            || !self.policy.is_host(&card.signature_key)
        {
            return Err(Error::Usage("only a lobby's host returns this way"));
        }
        let ticket = return_ticket_of(key_package)?
            .filter(|t| t.group_id == self.group.group_id())
            .ok_or(Error::Usage(
                "the host's KeyPackage names no epoch of this group",
            ))?;
        if !self.returns.has(&ticket) {
            return Err(Error::Usage(
                "this member keeps no secret of the epoch the host names",
            ));
        }
        let out = self
            .group
            .commit_builder()
            .commit_time(now.into())
            .add_member(parse_message(key_package)?)
            .map_err(map_mls)?
            .add_external_psk(ticket.psk_id())
            .map_err(map_mls)?
            .build()
            .map_err(map_mls)?;
        self.pend(out)
    }
}
