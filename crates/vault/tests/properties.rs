//! Secret values from the network: arbitrary input never panics and gives credentials or a
//! typed problem that never quotes the input; valid values round-trip.

use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};
use truelayer_auth_vault::SecretFormat;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_values_never_panic_or_leak(value in any::<String>()) {
        for format in [SecretFormat::json(), SecretFormat::plain_secret("id")] {
            if let Err(problem) = format.parse(&SecretString::from(value.as_str())) {
                let text = problem.to_string();
                // Field names are the configured ones; nothing else of the value is quoted.
                prop_assert!(value.trim().len() < 8 || !text.contains(value.trim()), "{text}");
            }
        }
    }

    #[test]
    fn json_values_round_trip(id in "[A-Za-z0-9-]{1,40}", secret in "[ -~]{1,80}", extra in any::<String>()) {
        prop_assume!(!secret.trim().is_empty());
        let value = serde_json::json!({ "client_id": id, "client_secret": secret, "note": extra }).to_string();
        let loaded = SecretFormat::json().parse(&SecretString::from(value)).unwrap();
        prop_assert_eq!(loaded.credentials().client_id(), id.as_str());
        prop_assert_eq!(loaded.credentials().client_secret().expose_secret(), secret.trim());
    }
}
