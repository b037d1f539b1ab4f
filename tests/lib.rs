//! End-to-end tests across the truelayer-auth crates live in this package's test targets.
