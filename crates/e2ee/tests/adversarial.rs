//! Attacks on the E2EE core by a malicious server, network or member, one test each:
//! `cargo test --workspace adversarial` runs these with the other crates' adversarial tests.

mod common;

#[path = "adversarial/frames.rs"]
mod adversarial_frames;
#[path = "adversarial/inputs.rs"]
mod adversarial_inputs;
#[path = "adversarial/mls.rs"]
mod adversarial_mls;
#[path = "adversarial/policy.rs"]
mod adversarial_policy;
