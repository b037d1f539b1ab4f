//! Bytes held per keyed-cache entry, measured with a counting allocator. This is a bound on
//! memory, not a timing: it fails only if an entry grows far past what the docs say.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use secrecy::ExposeSecret;
use truelayer_auth::{ClientCredentials, KeyedTokenCache, Scopes};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::environment;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(flavor = "current_thread")]
async fn an_entry_with_an_hour_long_token_costs_a_few_kib() {
    const N: usize = 500;
    let emulator = Emulator::start().await.unwrap();
    let creds: Vec<_> = (0..N)
        .map(|i| {
            ClientCredentials::new(format!("merchant-{i:04}"), format!("secret-{i}").into())
                .unwrap()
        })
        .collect();
    for c in &creds {
        emulator.add_client(
            c.client_id(),
            c.client_secret().expose_secret(),
            ["payments"],
        );
    }
    let env = environment(&emulator);
    let keyed = KeyedTokenCache::builder().build().unwrap();
    // Warm the connection pool and one-time state first.
    keyed
        .token(&env, &creds[0], &Scopes::payments())
        .await
        .unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    for c in &creds[1..] {
        keyed.token(&env, c, &Scopes::payments()).await.unwrap();
    }
    let per_entry = (LIVE.load(Ordering::Relaxed) - before) / (N as isize - 1);
    eprintln!("keyed cache: {per_entry} bytes per entry");
    assert!(
        per_entry > 1_000,
        "the measurement sees the entries: {per_entry}"
    );
    assert!(
        per_entry < 12 * 1024,
        "an entry grew past 12 KiB: {per_entry} bytes"
    );
}
