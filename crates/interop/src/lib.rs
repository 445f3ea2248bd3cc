//! Interoperability tests for Conclave's MLS layer; this crate has no library code.
//!
//! `tests/openmls_member.rs` drives a member written against openmls 0.9.2 alone (its own
//! encoder of the Conclave credential, its own security-code derivation, no Conclave or mls-rs
//! code on its side) through the real delivery-service core, in one group with mls-rs members
//! running the real participant core: it knocks, is welcomed, follows joins, updates and
//! leaves, commits itself, and leaves cleanly, agreeing on the security code in every epoch.
#![forbid(unsafe_code)]
