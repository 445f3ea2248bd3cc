//! Knocks: a KeyPackage is validated in full before anyone sees it, kept until a commit adds
//! it, a host denies it, or its connection or lifetime ends.

use conclave_mls::{
    check_invited, Admission, CredentialInfo, HostReturn, KeyPackageCard, Timestamp,
};
use conclave_proto::{Bytes, ErrorCode, KnockId, KnockInfo, ServerMsg};
use mls_rs::extension::built_in::RequiredCapabilitiesExt;
use mls_rs::group::proposal::AddProposal;
use mls_rs::{KeyPackage, MlsMessage};
use mls_rs_codec::MlsEncode;
use tracing::info;

use crate::room::{ConnState, Ctx, Knock, Room, MAX_EARLY_KNOCKS};
use crate::ConnId;

impl Room {
    /// Validates a knock's KeyPackage fully before anyone sees it: size, signatures (the
    /// KeyPackage's and its leaf's), lifetime, ciphersuite, capabilities the group requires,
    /// the credential naming the token's user, and, in an invite-list room, the invite. A
    /// KeyPackage refused here never reaches a committer, so it cannot stop the others' adds.
    fn check_key_package(
        &self,
        cx: &Ctx<'_>,
        conn: ConnId,
        key_package: &[u8],
        now: Timestamp,
    ) -> Result<KeyPackage, String> {
        let card = KeyPackageCard::read(key_package).map_err(|e| e.to_string())?;
        let c = cx.conns.0.get(&conn).ok_or("no such connection")?;
        // The credential must carry the user id the token named: members see the identity
        // the server vouched for, and cannot be shown another.
        if card.credential.user_id != c.user_id {
            return Err(format!(
                "the KeyPackage names {:?}, the token {:?}",
                card.credential.user_id, c.user_id
            ));
        }
        let msg = MlsMessage::from_bytes(key_package).map_err(|e| e.to_string())?;
        let kp = cx
            .client
            .validate_key_package(msg, Some(now.into()))
            .map_err(|e| format!("invalid KeyPackage: {e}"))?;
        let (Some(group), Some(policy)) = (self.group.as_ref(), self.policy()) else {
            return Ok(kp);
        };
        let ctx = group.group_context();
        if kp.cipher_suite() != ctx.cipher_suite {
            return Err("the KeyPackage is for another ciphersuite".into());
        }
        let add = AddProposal::from(kp.clone());
        if let Ok(Some(required)) = ctx.extensions.get_as::<RequiredCapabilitiesExt>() {
            let caps = add.capabilities();
            let missing = required
                .extensions
                .iter()
                .any(|e| !caps.extensions.contains(e))
                || required
                    .proposals
                    .iter()
                    .any(|p| !caps.proposals.contains(p));
            if missing {
                return Err("the KeyPackage lacks capabilities the room requires".into());
            }
        }
        check_invited(card.suite, policy, &add).map_err(|e| e.to_string())?;
        Ok(kp)
    }

    /// A connection knocks with a KeyPackage.
    pub(crate) fn knock(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        key_package: Vec<u8>,
        now: Timestamp,
    ) {
        let kp = match self.check_key_package(cx, conn, &key_package, now) {
            Ok(kp) => kp,
            Err(reason) => return cx.sink.refuse(conn, ErrorCode::Rejected, reason),
        };
        let Some(info) = CredentialInfo::from_credential(&kp.signing_identity().credential).ok()
        else {
            return cx
                .sink
                .refuse(conn, ErrorCode::Rejected, "invalid credential");
        };
        let Some(group) = self.group.as_ref() else {
            // The creator has not uploaded the group yet: keep the knock until it does (one
            // per connection, a bounded number per room).
            if self.early.iter().any(|(c, _)| *c == conn) {
                return cx
                    .sink
                    .refuse(conn, ErrorCode::Unexpected, "already knocked");
            }
            if self.early.len() >= MAX_EARLY_KNOCKS {
                return cx.sink.refuse(
                    conn,
                    ErrorCode::RateLimited,
                    "too many knocks wait for this room's group; try again",
                );
            }
            self.early.push((conn, key_package));
            return;
        };
        let signature_key = kp.signing_identity().signature_key.as_bytes().to_vec();
        if self.knocks.iter().any(|k| k.signature_key == signature_key) {
            return cx.sink.refuse(
                conn,
                ErrorCode::Rejected,
                "this device is already knocking on another connection",
            );
        }
        let encoded = kp.mls_encode_to_vec().unwrap_or_default();
        let expires = kp.expiration().map_or(now, |t| {
            // A KeyPackage may name any not_after (mls-rs sets no upper limit): saturate.
            Timestamp::from_millis(t.seconds_since_epoch().saturating_mul(1000))
        });
        // The same device knocking again (it lost its connection and came back with a fresh
        // KeyPackage): its old leaf is stale, so propose its removal now rather than after
        // `remove_after`. A device whose leaf is still connected cannot join twice.
        let stale = group
            .roster()
            .members_iter()
            .find(|m| m.signing_identity.signature_key.as_bytes() == signature_key.as_slice())
            .map(|m| m.index);
        let group_id = group.group_context().group_id.clone();
        let mut returning = false;
        if let Some(leaf) = stale {
            if !self.offline.contains_key(&leaf) {
                return cx.sink.refuse(
                    conn,
                    ErrorCode::Rejected,
                    "this device is already in the room on another connection",
                );
            }
            self.offline.insert(leaf, Timestamp::from_millis(0));
            returning = true;
        }
        let id = self.next_knock;
        self.next_knock = self.next_knock.next();
        let knock = KnockInfo {
            knock: id,
            user_id: info.user_id.clone(),
            name: info.display_name.clone(),
            key_package: Bytes(key_package),
        };
        let returning_host = self.policy().is_some_and(|p| {
            matches!(p.admission, Admission::Lobby(_))
                && p.is_host(&kp.signing_identity().signature_key)
        }) && kp
            .extensions
            .get_as::<HostReturn>()
            .ok()
            .flatten()
            .is_some_and(|t| t.group_id == group_id);
        self.knocks.push(Knock {
            id,
            conn,
            info: knock.clone(),
            signature_key,
            key_package: encoded,
            expires,
            returning_host,
        });
        self.work_since.get_or_insert(now);
        if let Some(c) = cx.conns.0.get_mut(&conn) {
            c.state = ConnState::Knocking(id);
        }
        self.send_to_hosts(cx, &ServerMsg::Knock { knock });
        if returning {
            info!(room = %self.name, "a member's device is back: its old leaf goes");
            self.propose_removals(cx, now);
        }
        self.schedule(cx, now);
    }

    /// A host turns a knock away (in an open room, nobody needs to).
    pub(crate) fn deny(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        leaf: u32,
        knock: KnockId,
        now: Timestamp,
    ) {
        if self.group.is_none() {
            return;
        }
        if !self.is_host_leaf(leaf) {
            return cx
                .sink
                .refuse(conn, ErrorCode::Rejected, "only a host may deny a knock");
        }
        let Some(pos) = self.knocks.iter().position(|k| k.id == knock) else {
            return cx
                .sink
                .refuse(conn, ErrorCode::Unexpected, format!("no knock {knock}"));
        };
        let k = self.knocks.remove(pos);
        if self.knocks.is_empty() && self.pending_proposals == 0 {
            self.work_since = None;
        }
        cx.sink.send(
            k.conn,
            ServerMsg::Denied {
                reason: "a host turned the knock away".into(),
            },
        );
        cx.sink.close(k.conn, "denied");
        self.schedule(cx, now);
    }
}
