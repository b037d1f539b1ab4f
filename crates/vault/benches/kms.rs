//! Signing a 1 KiB POST with a key in AWS KMS (moto as the KMS: a local server, so this is
//! the client's cost and a loopback round trip, not KMS's own latency) against the
//! in-process key, side by side in one run. Needs `MOTO_URL` (`cargo xtask moto`); without
//! it the KMS contender is skipped and says so. Ratios go in docs/benchmarks.md.

use std::hint::black_box;

use aws_sdk_kms::types::{KeySpec, KeyUsageType};
use criterion::{Criterion, criterion_group, criterion_main};
use truelayer_auth_signing::{Signable, Signer};
use truelayer_auth_vault::KmsSigningKey;

fn body() -> Vec<u8> {
    let mut body = br#"{"amount_in_minor":100,"currency":"GBP","note":""#.to_vec();
    body.resize(1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn signing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = body();
    let request = Signable::new("POST", "/v3/payments")
        .header("Idempotency-Key", "b8f7c0f2-8f5b-4d8a-9c55-3e1f2a7d6b90")
        .body(&body);
    let mut group = c.benchmark_group("sign_1kib_post");
    let local = Signer::generate("kid");
    group.bench_function("in_process_key", |b| {
        b.iter(|| runtime.block_on(local.sign(black_box(&request))).unwrap());
    });
    match std::env::var("MOTO_URL") {
        Ok(_) => {
            let kms = runtime.block_on(async {
                let config = truelayer_auth_testkit::moto::config("eu-west-1").await;
                let client = aws_sdk_kms::Client::new(&config);
                let created = client
                    .create_key()
                    .key_spec(KeySpec::EccNistP521)
                    .key_usage(KeyUsageType::SignVerify)
                    .send()
                    .await
                    .unwrap();
                let key_id = created.key_metadata().unwrap().key_id().to_owned();
                KmsSigningKey::new(client, key_id).await.unwrap()
            });
            let signer = kms.signer("kid").unwrap();
            group.bench_function("kms_via_moto", |b| {
                b.iter(|| runtime.block_on(signer.sign(black_box(&request))).unwrap());
            });
        }
        Err(_) => eprintln!("kms_via_moto skipped: MOTO_URL is not set (run `cargo xtask moto`)"),
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
