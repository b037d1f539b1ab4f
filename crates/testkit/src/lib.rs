//! The set-up the truelayer-auth tests share, so that each test file says only what it checks.
//!
//! Not published: a dev-dependency of the workspace's integration tests, end-to-end tests and
//! benchmarks. It depends on `truelayer-auth` (and the emulator and signing crates), so a
//! crate's `#[cfg(test)]` unit tests cannot use it (they would see a second copy of the crate
//! under test); its integration tests (`tests/`) can.
//!
//! | module | what it sets up |
//! | --- | --- |
//! | [`emulator`] | the [`Environment`](truelayer_auth::Environment), credentials, [`TokenCache`](truelayer_auth::TokenCache) and [`Signer`](truelayer_auth_signing::Signer) for an [`Emulator`](truelayer_auth_emulator::Emulator) |
//! | [`recording`] | an HTTP server on loopback that records every request and answers as told |
//! | [`logs`] | a `tracing` subscriber whose output is kept, to assert that nothing leaks into logs |
//! | `moto` (feature `moto`) | the AWS SDK configuration for the moto server `cargo xtask ci` starts |
//! | `postgres` (feature `postgres`) | a fresh PostgreSQL database per test on the server in `DATABASE_URL` (`cargo xtask ci` starts one) |

pub mod emulator;
pub mod logs;
#[cfg(feature = "moto")]
pub mod moto;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod recording;
