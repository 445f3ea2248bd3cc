//! The server's MLS identity: the group's one external sender, which follows each group's
//! public state and signs the removal proposals of members that vanished.

use conclave_mls::{
    provider, suite_provider, ConclaveIdentityProvider, ConclaveRules, Provider, RoomCipherSuite,
    HOST_RETURN_EXTENSION, INVITE_EXTENSION, ROOM_POLICY_EXTENSION,
};
use mls_rs::external_client::builder::{
    ExternalBaseConfig, WithCryptoProvider, WithIdentityProvider, WithMlsRules,
};
use mls_rs::external_client::ExternalClient;
use mls_rs::identity::basic::BasicCredential;
use mls_rs::identity::SigningIdentity;
use mls_rs::CipherSuiteProvider;
use mls_rs_core::crypto::SignatureSecretKey;

use crate::Error;

pub(crate) type ExtConfig = WithMlsRules<
    ConclaveRules,
    WithIdentityProvider<
        ConclaveIdentityProvider,
        WithCryptoProvider<Provider, ExternalBaseConfig>,
    >,
>;

/// A generated server signing identity (for the group's external-sender list).
pub fn generate_server_identity(
    suite: RoomCipherSuite,
) -> Result<(SignatureSecretKey, SigningIdentity), Error> {
    let cs = suite_provider(suite).map_err(|e| Error::ServerKey(e.to_string()))?;
    let (secret, public) = cs
        .signature_key_generate()
        .map_err(|e| Error::ServerKey(format!("{e:?}")))?;
    Ok((secret, server_signing_identity(public.as_bytes())))
}

/// The server's signing identity for a public key.
pub fn server_signing_identity(public_key: &[u8]) -> SigningIdentity {
    SigningIdentity::new(
        BasicCredential::new(b"conclave-server".to_vec()).into_credential(),
        public_key.to_vec().into(),
    )
}

/// The external client that follows every room's group, with the members' own rules.
pub(crate) fn external_client(
    secret: SignatureSecretKey,
    identity: SigningIdentity,
) -> ExternalClient<ExtConfig> {
    ExternalClient::builder()
        .crypto_provider(provider())
        .identity_provider(ConclaveIdentityProvider)
        .mls_rules(ConclaveRules::default())
        .extension_type(ROOM_POLICY_EXTENSION)
        .extension_type(INVITE_EXTENSION)
        .extension_type(HOST_RETURN_EXTENSION)
        .cache_proposals(true)
        .signer(secret, identity)
        .build()
}
