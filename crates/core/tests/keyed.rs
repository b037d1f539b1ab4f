//! One keyed cache for many merchant accounts.

use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::{advance, sleep};
use truelayer_auth::{ClientCredentials, KeyedTokenCache, Scope, Scopes};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::environment;

fn merchant(i: usize) -> ClientCredentials {
    ClientCredentials::new(format!("merchant-{i}"), format!("secret-{i}").into()).unwrap()
}

async fn emulator_with(n: usize) -> Emulator {
    let emulator = Emulator::start().await.unwrap();
    for i in 0..n {
        let c = merchant(i);
        emulator.add_client(
            c.client_id(),
            c.client_secret().expose_secret(),
            ["payments", "signupplus"],
        );
    }
    emulator
}

#[tokio::test(start_paused = true)]
async fn a_thousand_merchants_each_get_their_own_token_once() {
    let emulator = emulator_with(1000).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder().build().unwrap();
    let tasks: Vec<_> = (0..1000)
        .flat_map(|i| [i, i]) // two callers per merchant, racing
        .map(|i| {
            let (keyed, env) = (keyed.clone(), env.clone());
            tokio::spawn(async move {
                let token = keyed
                    .token(&env, &merchant(i), &Scopes::payments())
                    .await
                    .unwrap();
                (i, token)
            })
        })
        .collect();
    for task in tasks {
        let (i, token) = task.await.unwrap();
        let claims = emulator
            .verify_token(token.secret().expose_secret())
            .unwrap();
        assert_eq!(claims.client_id, format!("merchant-{i}"));
    }
    assert_eq!(emulator.stats().token_requests, 1000, "one fetch per key");
    assert_eq!(keyed.len(), 1000);

    for i in 0..1000 {
        keyed
            .token(&env, &merchant(i), &Scopes::payments())
            .await
            .unwrap();
    }
    assert_eq!(
        emulator.stats().token_requests,
        1000,
        "the second round is all hits"
    );
}

#[tokio::test(start_paused = true)]
async fn the_key_includes_the_normalized_scope_set() {
    let emulator = emulator_with(1).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder().build().unwrap();
    let a = Scopes::payments().with(Scope::SignupPlus);
    let b: Scopes = "signupplus payments".parse().unwrap();
    let t1 = keyed.token(&env, &merchant(0), &a).await.unwrap();
    let t2 = keyed.token(&env, &merchant(0), &b).await.unwrap();
    assert_eq!(t1.id(), t2.id(), "same set, same key");
    keyed
        .token(&env, &merchant(0), &Scopes::payments())
        .await
        .unwrap();
    assert_eq!(keyed.len(), 2);
    assert_eq!(emulator.stats().token_requests, 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_is_only_handed_to_a_caller_holding_the_secret_it_was_fetched_with() {
    let emulator = emulator_with(1).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder().build().unwrap();
    let first = keyed
        .token(&env, &merchant(0), &Scopes::payments())
        .await
        .unwrap();
    // Another tenant names merchant-0's client_id (not a secret) with a secret of its own:
    // it gets no token of merchant-0's, and merchant-0 is not disturbed.
    let impostor = ClientCredentials::new("merchant-0", "guessed-secret".into()).unwrap();
    let err = keyed
        .token(&env, &impostor, &Scopes::payments())
        .await
        .unwrap_err();
    assert!(err.is_invalid_client(), "{err:?}");
    let again = keyed
        .token(&env, &merchant(0), &Scopes::payments())
        .await
        .unwrap();
    assert_eq!(again.id(), first.id(), "the merchant's own entry is intact");

    // After a rotation the new secret gets a token of its own, fetched with it.
    let rotated = emulator.rotate_secret("merchant-0").unwrap();
    let new_creds = ClientCredentials::new("merchant-0", rotated.into()).unwrap();
    let errors_before = emulator.stats().token_errors;
    let fresh = keyed
        .token(&env, &new_creds, &Scopes::payments())
        .await
        .unwrap();
    assert_ne!(fresh.id(), first.id());
    assert_eq!(
        emulator.stats().token_errors,
        errors_before,
        "the new secret was sent straight away"
    );
    // Offboarding the merchant drops its entries, whatever secret made them.
    let key = truelayer_auth::CacheKey::new(env.clone(), "merchant-0", Scopes::payments());
    assert!(keyed.remove(&key));
    assert_eq!(keyed.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_by_max_entries_and_idle_eviction() {
    let emulator = emulator_with(30).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder()
        .max_entries(10)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    for i in 0..20 {
        keyed
            .token(&env, &merchant(i), &Scopes::payments())
            .await
            .unwrap();
        advance(Duration::from_millis(10)).await;
    }
    assert_eq!(keyed.len(), 10, "least recently used entries were dropped");
    // Evicted entries stop refreshing: over two hours only the 10 live keys refresh.
    let before = emulator.stats().token_requests;
    for _ in 0..12 {
        advance(Duration::from_secs(590)).await;
        sleep(Duration::from_millis(1)).await;
        keyed
            .token(&env, &merchant(19), &Scopes::payments())
            .await
            .unwrap();
    }
    let refreshes = emulator.stats().token_requests - before;
    assert!(refreshes <= 3, "only the key in use refreshed: {refreshes}");
    assert_eq!(keyed.len(), 1, "idle keys were evicted");
}

#[tokio::test(start_paused = true)]
async fn an_entry_a_caller_holds_is_never_evicted_and_idle_ones_are_swept_on_a_timer() {
    let emulator = emulator_with(6).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder()
        .max_entries(2)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // One layer per merchant would hold its cache and never call `get` again.
    let held = keyed.get(&env, &merchant(0), &Scopes::payments());
    let first = held.token().await.unwrap();
    // Churn well past capacity, and let the idle timeout pass many times over.
    for i in 1..6 {
        keyed
            .token(&env, &merchant(i), &Scopes::payments())
            .await
            .unwrap();
    }
    for _ in 0..12 {
        advance(Duration::from_secs(600)).await;
        sleep(Duration::from_millis(1)).await;
    }
    // No `get` ran in those two hours: the sweep ran on its own timer and dropped the idle
    // entries, but never the held one.
    assert_eq!(keyed.len(), 1, "only the held entry is left");
    let again = keyed.get(&env, &merchant(0), &Scopes::payments());
    assert_eq!(
        again.cached().unwrap().id(),
        held.cached().unwrap().id(),
        "the keyed cache and the held one are the same cache"
    );
    assert_ne!(
        held.cached().unwrap().id(),
        first.id(),
        "and it kept refreshing"
    );
    // With the held one dropped too, it goes idle and is swept; its refreshing stops.
    drop((held, again));
    for _ in 0..3 {
        advance(Duration::from_secs(600)).await;
        sleep(Duration::from_millis(1)).await;
    }
    assert!(keyed.is_empty());
    let before = emulator.stats().token_requests;
    advance(Duration::from_secs(4 * 3600)).await;
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        emulator.stats().token_requests,
        before,
        "no refresh after eviction"
    );
}

#[tokio::test(start_paused = true)]
async fn behind_a_token_source_requests_pick_their_merchant_by_cache_key() {
    use std::sync::Arc;
    use truelayer_auth::{CacheKey, CredentialsSource, Error, TokenSource};
    let emulator = emulator_with(3).await;
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder()
        .credentials_for(|key| {
            let i: usize = key.client_id().strip_prefix("merchant-")?.parse().ok()?;
            (i < 3).then(|| Arc::new(merchant(i)) as Arc<dyn CredentialsSource>)
        })
        .build()
        .unwrap();
    let request = |client_id: &str| {
        let mut extensions = http::Extensions::new();
        extensions.insert(CacheKey::new(env.clone(), client_id, Scopes::payments()));
        extensions
    };
    for i in 0..3 {
        let token = TokenSource::token(&keyed, &request(&format!("merchant-{i}")))
            .await
            .unwrap();
        let claims = emulator.verify_token(secrecy::ExposeSecret::expose_secret(token.secret()));
        assert_eq!(claims.unwrap().client_id, format!("merchant-{i}"));
        assert!(
            TokenSource::cached(&keyed, &request(&format!("merchant-{i}")))
                .unwrap()
                .is_some()
        );
    }
    assert!(matches!(
        TokenSource::token(&keyed, &http::Extensions::new()).await,
        Err(Error::MissingCacheKey)
    ));
    assert!(matches!(
        TokenSource::token(&keyed, &request("merchant-9")).await,
        Err(Error::UnknownCacheKey { client_id }) if client_id == "merchant-9"
    ));
}
