//! A connection's token against the payments cache, side by side in one run: the warm read,
//! a cold load from SQLite, and refreshes per second with one and two managers (each with its
//! own store handle, as two processes have). Ratios go in docs/benchmarks.md.

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use truelayer_auth::DataScopes;
use truelayer_auth_connections::{
    ConnectionId, ConnectionManager, ConnectionStore, EncryptionKeys, SqliteStore,
};
use truelayer_auth_emulator::Emulator;
use truelayer_auth_testkit::emulator::{authorization_code, credentials, environment, token_cache};

const KEY: [u8; 32] = [3; 32];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path, EncryptionKeys::new("bench", KEY).unwrap())
        .await
        .unwrap()
}

async fn manager(emulator: &Emulator, path: &std::path::Path) -> ConnectionManager {
    ConnectionManager::builder(
        environment(emulator),
        credentials(emulator),
        store(path).await,
    )
    .build()
    .unwrap()
}

async fn connect(emulator: &Emulator, manager: &ConnectionManager) -> ConnectionId {
    let (code, _) = authorization_code(emulator, DataScopes::default()).await;
    manager.connect(&code).await.unwrap()
}

/// Marks every connection's access token expired, so the next `token()` refreshes it.
async fn expire(store: &SqliteStore, ids: &[ConnectionId]) {
    for id in ids {
        let mut row = store.get(id).await.unwrap().unwrap();
        row.access_expires_at = SystemTime::now() - Duration::from_secs(1);
        row.updated_at = SystemTime::now() - Duration::from_secs(3600);
        store.update(&row).await.unwrap();
    }
}

fn poll_once<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("a warm read answers at once"),
    }
}

fn warm_and_cold(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let payments = token_cache(&emulator);
    rt.block_on(payments.token()).unwrap();
    let warm = rt.block_on(manager(&emulator, &path));
    let id = rt.block_on(connect(&emulator, &warm));
    rt.block_on(warm.token(&id)).unwrap();

    let mut g = c.benchmark_group("connection_token/warm");
    g.bench_function("baseline_payments_cache_token", |b| {
        b.iter(|| black_box(poll_once(payments.token()).unwrap()))
    });
    g.bench_function("connection_manager_token", |b| {
        b.iter(|| black_box(poll_once(warm.token(&id)).unwrap()))
    });
    g.finish();

    // Cold: a manager that has never seen the connection loads it from SQLite (lock, read,
    // decrypt, release). The baseline is the store's read alone.
    let reader = rt.block_on(store(&path));
    let mut g = c.benchmark_group("connection_token/cold_from_sqlite");
    g.sample_size(30);
    g.bench_function("baseline_store_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(reader.get(&id).await.unwrap()) })
    });
    // The window no client can close (killed after TrueLayer rotated, before the write) is
    // this write: the fenced update of the row with the new pair, fsync included.
    g.bench_function("window_fenced_write_of_a_refreshed_pair", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut row = reader.get(&id).await.unwrap().unwrap();
                    row.updated_at = SystemTime::now();
                    let start = Instant::now();
                    black_box(reader.update(&row).await.unwrap());
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("fresh_manager_token", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let cold = manager(&emulator, &path).await;
                    let start = Instant::now();
                    black_box(cold.token(&id).await.unwrap());
                    total += start.elapsed();
                }
                total
            })
        })
    });
    g.finish();
}

/// Refreshes of `CONNECTIONS` expired connections, all asked for at once, by one manager or
/// by two (each asks for every connection; each connection must be refreshed once).
fn refreshes(c: &mut Criterion) {
    const CONNECTIONS: usize = 50;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let emulator = rt.block_on(Emulator::start()).unwrap();
    let setup = rt.block_on(manager(&emulator, &path));
    let ids: Vec<ConnectionId> = rt.block_on(async {
        let mut ids = Vec::new();
        for _ in 0..CONNECTIONS {
            ids.push(connect(&emulator, &setup).await);
        }
        ids
    });
    let writer = rt.block_on(store(&path));

    let mut g = c.benchmark_group("connection_refresh/50_connections");
    g.sample_size(10);
    g.throughput(criterion::Throughput::Elements(CONNECTIONS as u64));
    for managers in [1usize, 2] {
        g.bench_function(format!("{managers}_managers"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        expire(&writer, &ids).await;
                        let mut fleet = Vec::new();
                        for _ in 0..managers {
                            fleet.push(manager(&emulator, &path).await);
                        }
                        let before = emulator.data_stats().refreshes_served;
                        let start = Instant::now();
                        let calls = fleet.iter().flat_map(|m| {
                            ids.iter().map(move |id| {
                                let (m, id) = (m.clone(), id.clone());
                                tokio::spawn(async move { m.token(&id).await.unwrap() })
                            })
                        });
                        for call in futures_util::future::join_all(calls).await {
                            black_box(call.unwrap());
                        }
                        total += start.elapsed();
                        assert_eq!(
                            emulator.data_stats().refreshes_served - before,
                            CONNECTIONS as u64,
                            "each connection is refreshed once"
                        );
                    }
                    total
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, warm_and_cold, refreshes);
criterion_main!(benches);
