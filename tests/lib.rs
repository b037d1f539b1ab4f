//! End-to-end tests across the truelayer-auth crates live in this package's test targets.
//! The README's Rust examples compile here as doctests.

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/operations.md")]
#[cfg(doctest)]
pub struct OperationsDoctests;
