//! Signing and verifying a 1 KiB POST: this crate (aws-lc-rs) against TrueLayer's own crate
//! (OpenSSL) and RustCrypto's `p521`, side by side in one run; and a POST end to end over
//! loopback through bearer + signing against bearer alone. Ratios go in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use p521::ecdsa::signature::{Signer as _, Verifier as _};
use p521::pkcs8::{DecodePrivateKey, DecodePublicKey};
use tower::{Layer, ServiceExt};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_signing::{Signable, Signer, SigningLayer, Verifier};
use truelayer_auth_testkit::emulator::token_cache;
use truelayer_auth_tower::{BearerAuthLayer, CloneBodies};

const KID: &str = "45fc75cf-5649-4134-84b3-192c2c78e990";
const PRIVATE: &[u8] = include_bytes!("../tests/vectors/ec512-private.pem");
const PUBLIC: &[u8] = include_bytes!("../tests/vectors/ec512-public.pem");
const PATH: &str = "/v3/payments";
const KEY: &str = "b8f7c0f2-8f5b-4d8a-9c55-3e1f2a7d6b90";

fn body() -> Vec<u8> {
    let mut body = br#"{"amount_in_minor":100,"currency":"GBP","note":""#.to_vec();
    body.resize(1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// The same JWS, made with RustCrypto's `p521` (what this crate would do with it).
fn p521_sign(key: &p521::ecdsa::SigningKey, body: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"alg":"ES512","kid":"{KID}","tl_version":"2","tl_headers":"Idempotency-Key"}}"#
    ));
    let mut payload = format!("POST {PATH}\nIdempotency-Key: {KEY}\n").into_bytes();
    payload.extend_from_slice(body);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let signature: p521::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn p521_verify(key: &p521::ecdsa::VerifyingKey, body: &[u8], value: &str) -> bool {
    let (header, signature) = value.split_once("..").unwrap();
    let mut payload = format!("POST {PATH}\nIdempotency-Key: {KEY}\n").into_bytes();
    payload.extend_from_slice(body);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&payload));
    let signature =
        p521::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    key.verify(input.as_bytes(), &signature).is_ok()
}

fn sign_and_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = body();
    let request = Signable::new("POST", PATH)
        .header("Idempotency-Key", KEY)
        .body(&body);
    let ours = Signer::from_pem(KID, PRIVATE).unwrap();
    let verifier = Verifier::from_public_pem(PUBLIC).unwrap();
    let rustcrypto = p521::ecdsa::SigningKey::from_pkcs8_pem(
        &p521::SecretKey::from_sec1_pem(std::str::from_utf8(PRIVATE).unwrap())
            .map(|k| {
                use p521::pkcs8::EncodePrivateKey;
                k.to_pkcs8_pem(p521::pkcs8::LineEnding::LF)
                    .unwrap()
                    .to_string()
            })
            .unwrap(),
    )
    .unwrap();
    let rustcrypto_public =
        p521::ecdsa::VerifyingKey::from_public_key_pem(std::str::from_utf8(PUBLIC).unwrap())
            .unwrap();
    let truelayer = || {
        truelayer_signing::sign_with_pem(KID, PRIVATE)
            .method(truelayer_signing::Method::Post)
            .path(PATH)
            .header("Idempotency-Key", KEY.as_bytes())
            .body(&body)
            .build_signer()
            .sign()
            .unwrap()
    };
    let signature = rt.block_on(ours.sign(&request)).unwrap();

    let mut g = c.benchmark_group("sign_1kib_post");
    g.bench_function("truelayer_signing_openssl", |b| {
        b.iter(|| black_box(truelayer()))
    });
    g.bench_function("ours_aws_lc_rs", |b| {
        b.iter(|| black_box(rt.block_on(ours.sign(&request)).unwrap()))
    });
    g.bench_function("rustcrypto_p521", |b| {
        b.iter(|| black_box(p521_sign(&rustcrypto, &body)))
    });
    g.finish();

    let mut g = c.benchmark_group("verify_1kib_post");
    g.bench_function("truelayer_signing_openssl", |b| {
        b.iter(|| {
            truelayer_signing::verify_with_pem(PUBLIC)
                .method(truelayer_signing::Method::Post)
                .path(PATH)
                .header("Idempotency-Key", KEY.as_bytes())
                .body(&body)
                .build_verifier()
                .verify(&signature)
                .unwrap()
        })
    });
    g.bench_function("ours_aws_lc_rs", |b| {
        b.iter(|| verifier.verify(&request, &signature).unwrap())
    });
    g.bench_function("rustcrypto_p521", |b| {
        b.iter(|| assert!(p521_verify(&rustcrypto_public, &body, &signature)))
    });
    g.finish();
}

/// An upstream that answers every request 201 at once (the emulator would refuse unsigned
/// POSTs, which would not be a like-for-like comparison).
async fn accepting_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: http::Request<_>| async move {
                    let _ = BodyExt::collect(request.into_body()).await;
                    let mut response = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                    *response.status_mut() = http::StatusCode::CREATED;
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/v3/payments")
}

fn end_to_end(c: &mut Criterion) {
    const TASKS: u64 = 32;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (emulator, url) =
        rt.block_on(async { (Emulator::start().await.unwrap(), accepting_upstream().await) });
    let tokens = token_cache(&emulator);
    rt.block_on(tokens.token()).unwrap();
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let bearer = BearerAuthLayer::new(tokens).replay_policy(CloneBodies);
    let plain = bearer.layer(hyper.clone());
    let signed =
        bearer.layer(SigningLayer::new(Signer::from_pem(KID, PRIVATE).unwrap()).layer(hyper));
    let body = Bytes::from(body());
    let url = Arc::new(url);

    let run = |iters: u64, signed_too: bool| {
        let (plain, signed, body, url) = (plain.clone(), signed.clone(), body.clone(), url.clone());
        rt.block_on(async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (plain, signed, body, url) =
                        (plain.clone(), signed.clone(), body.clone(), url.clone());
                    tokio::spawn(async move {
                        for _ in 0..iters.div_ceil(TASKS) {
                            let request = http::Request::post(url.as_str())
                                .header("idempotency-key", KEY)
                                .body(Full::new(body.clone()))
                                .unwrap();
                            let response = if signed_too {
                                signed.clone().oneshot(request).await.unwrap()
                            } else {
                                plain.clone().oneshot(request).await.unwrap()
                            };
                            assert_eq!(response.status(), 201);
                            let _ = BodyExt::collect(response.into_body()).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            started.elapsed()
        })
    };
    let mut g = c.benchmark_group("post_1kib_loopback_32_tasks");
    g.sample_size(20);
    g.bench_function("bearer", |b| b.iter_custom(|iters| run(iters, false)));
    g.bench_function("bearer_and_signing", |b| {
        b.iter_custom(|iters| run(iters, true))
    });
    g.finish();
    drop(emulator);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = sign_and_verify, end_to_end
}
criterion_main!(benches);
