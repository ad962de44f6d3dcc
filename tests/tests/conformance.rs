//! The conformance suite (`vaultbridge_tests::conformance`): every provider
//! runs the same cases — found, JSON field, version, binary, not found,
//! denied, unauthenticated, hung, throttled with Retry-After, a
//! non-idempotent call, `check` (good and refused credentials), the
//! environment form, backend down and `check` then — both
//! in this process through the plugin's `Resolver` and through the real
//! binary's socket. One test per backend (the cases share its server); a
//! failure names each failed `backend/case/way`, and the table of results
//! is printed (`--nocapture` shows it for passing runs too).
//!
//! Needs the test backends (tests/setup.sh). Run:
//! `cargo test -p vaultbridge-tests --all-features --test conformance`

use vaultbridge_tests::conformance::{self, file::FileFixture};

#[test]
fn file() {
    conformance::run(&mut FileFixture::start());
}

#[cfg(feature = "vault")]
#[test]
fn vault() {
    conformance::run(&mut conformance::vault::VaultFixture::start());
}

#[cfg(feature = "aws")]
#[test]
fn aws() {
    conformance::run(&mut conformance::aws::AwsFixture::start());
}

#[cfg(feature = "azure")]
#[test]
fn azure() {
    conformance::run(&mut conformance::azure::AzureFixture::start());
}

#[cfg(feature = "gcp")]
#[test]
fn gcp() {
    conformance::run(&mut conformance::gcp::GcpFixture::start());
}
