//! Several controllers (pug replicas, each with its own owner id and its own connection pool)
//! on ONE real PostgreSQL store and ONE shared in-memory orchestrator ([`fake`]), which records
//! every operation on a tenant that starts while another replica's operation on it is in flight.
//!
//! - Two and three replicas: 200 tenants converge with exactly their replicas running (no
//!   duplicate, no orphan), each replica started once, and no overlapping operation.
//! - A replica's tasks aborted without giving anything back (what kill -9 does) in the middle
//!   of a rolling upgrade: another replica takes its tenants over once their leases run out and
//!   finishes the upgrade, again with no overlapping operation.
//! - A replica cut off from PostgreSQL (a TCP forwarder in between, cut): it stops acting and
//!   reports not ready within its lease, the other converges the fleet; restored, it is ready
//!   again.
//!
//! PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role `.ci/run` creates); each
//! test gets a fresh database.

mod fake;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake::Fake;
use pug_controller::{Controller, ControllerMetrics, ControllerSettings};
use pug_store::{generate_secret, secret, MasterKey, Store};
use pug_types::{DesiredState, GrafanaVersion, Overrides, Phase, TenantId, TenantSpec};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const V1: &str = "11.3.0";
const V2: &str = "11.4.0";
const LEASE: Duration = Duration::from_millis(1500);

/// A fresh database on the test server; dropped by [`TestDb::drop_db`].
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    async fn create(tag: &str) -> Self {
        let name = format!("pug_replicas_{tag}_{}", std::process::id());
        let url = pug_test_support::postgres::fresh_database(&name).await;
        Self { name, url }
    }

    /// The same database, for a second URL to it.
    fn create_named(db: &TestDb) -> Self {
        Self {
            name: db.name.clone(),
            url: db.url.clone(),
        }
    }

    async fn drop_db(&self) {
        pug_test_support::postgres::drop_database(&self.name).await;
    }
}

fn spec(version: &str, replicas: u32) -> TenantSpec {
    TenantSpec {
        display_name: "Acme".into(),
        version: GrafanaVersion::parse(version).unwrap(),
        replicas: pug_types::Replicas::new(replicas).unwrap(),
        desired_state: DesiredState::Active,
        overrides: Overrides::default(),
        labels: Default::default(),
        datasources: Vec::new(),
        dashboards: Vec::new(),
        idle_timeout_secs: None,
    }
}

/// One pug replica: a controller with its own store connection and its own fake handle.
struct Pug {
    controller: Controller,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

async fn start_pug(db: &TestDb, key: &MasterKey, fake: &Fake, name: &str) -> Pug {
    start_pug_with(db, key, fake, name, LEASE, 8).await
}

async fn start_pug_with(
    db: &TestDb,
    key: &MasterKey,
    fake: &Fake,
    name: &str,
    lease: Duration,
    concurrency: usize,
) -> Pug {
    let store = Store::open(&db.url, key.clone()).await.unwrap();
    let mut settings = ControllerSettings::from_config(&pug_config::Config::default());
    settings.owner = format!("pug-{name}");
    settings.lease = lease;
    settings.concurrency = concurrency;
    let metrics =
        ControllerMetrics::register(&mut prometheus_client::registry::Registry::default());
    let orchestrator = Arc::new(fake.tagged(name));
    let controller = Controller::new(store, orchestrator, settings, metrics, None);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(pug_controller::run(controller.clone(), shutdown.clone()));
    Pug {
        controller,
        task,
        shutdown,
    }
}

async fn create_tenants(store: &Store, n: usize, replicas: impl Fn(usize) -> u32) -> Vec<TenantId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = TenantId::parse(&format!("t{i:03}")).unwrap();
        let secrets = [
            (secret::ADMIN_PASSWORD, generate_secret()),
            (secret::SECRET_KEY, generate_secret()),
        ];
        store
            .create_tenant(&id, &spec(V1, replicas(i)), &secrets)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Polls until every tenant is ready on `version` with each of its replicas running it, for at
/// most `within`; panics with what is missing otherwise.
async fn converged(store: &Store, fake: &Fake, version: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let tenants = store.tenants().await.unwrap();
        let running = fake.running();
        let mut by_tenant: BTreeMap<&TenantId, Vec<(u32, &str)>> = BTreeMap::new();
        for (t, r, v) in &running {
            by_tenant.entry(t).or_default().push((*r, v.as_str()));
        }
        let pending: Vec<String> = tenants
            .iter()
            .filter(|t| {
                let want = t.spec.replicas.get() as usize;
                let have = by_tenant.get(&t.id).map(Vec::as_slice).unwrap_or_default();
                t.status.phase != Phase::Ready
                    || t.status.running_version.as_deref() != Some(version)
                    || have.len() != want
                    || have.iter().any(|(_, v)| *v != version)
            })
            .map(|t| format!("{}: {:?} {:?}", t.id, t.status.phase, by_tenant.get(&t.id)))
            .collect();
        if pending.is_empty() {
            // Nothing runs for a tenant the store does not know (no orphan).
            for (t, r, _) in &running {
                assert!(
                    tenants
                        .iter()
                        .any(|x| x.id == *t && *r < x.spec.replicas.get()),
                    "orphan instance {t}/{r}"
                );
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not converged within {within:?}: {} tenants, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn n_replicas_converge_200_tenants(n: usize) {
    let db = TestDb::create(&format!("converge{n}")).await;
    let key = MasterKey::generate();
    let fake = Fake::start().await;
    fake.slow(Duration::from_millis(5));
    let setup = Store::open(&db.url, key.clone()).await.unwrap();
    let ids = create_tenants(&setup, 200, |i| 1 + (i % 2) as u32).await;
    let mut pugs = Vec::new();
    for i in 0..n {
        pugs.push(start_pug(&db, &key, &fake, &format!("{i}")).await);
    }
    converged(&setup, &fake, V1, Duration::from_secs(120)).await;

    assert_eq!(
        fake.overlaps(),
        Vec::new(),
        "two replicas acted on one tenant at once"
    );
    let starts = fake.starts_by();
    let expected: usize = ids.iter().enumerate().map(|(i, _)| 1 + i % 2).sum();
    assert_eq!(
        starts.values().sum::<usize>(),
        expected,
        "each replica of each tenant started exactly once: {starts:?}"
    );
    eprintln!("starts per pug replica: {starts:?}");
    for pug in &pugs {
        pug.shutdown.cancel();
    }
    for pug in pugs {
        pug.task.await.unwrap();
        assert_eq!(pug.controller.leases.held(), 0);
    }
    // A clean stop gives every lease back.
    assert_eq!(setup.live_leases().await.unwrap(), 0);
    setup.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_converge_200_tenants_without_overlap() {
    n_replicas_converge_200_tenants(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_converge_200_tenants_without_overlap() {
    n_replicas_converge_200_tenants(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_s_upgrade_is_finished_by_another_after_its_leases_run_out() {
    let db = TestDb::create("takeover").await;
    let key = MasterKey::generate();
    let fake = Fake::start().await;
    let setup = Store::open(&db.url, key.clone()).await.unwrap();
    let ids = create_tenants(&setup, 40, |_| 2).await;
    let a = start_pug(&db, &key, &fake, "a").await;
    let b = start_pug(&db, &key, &fake, "b").await;
    converged(&setup, &fake, V1, Duration::from_secs(60)).await;

    // Every operation takes long enough that a pass is caught in the middle.
    fake.slow(Duration::from_millis(150));
    for id in &ids {
        let mut s = setup.tenant(id).await.unwrap().unwrap().spec;
        s.version = GrafanaVersion::parse(V2).unwrap();
        setup
            .update_spec(id, None, &s, ("UpgradeRequested", "upgrade requested"))
            .await
            .unwrap();
    }
    a.controller.wake();
    b.controller.wake();
    // Wait until `a` is mid-upgrade (holds leases), then kill it: nothing is given back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.controller.leases.held() == 0 {
        assert!(Instant::now() < deadline, "pug a never took a lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.task.abort();
    let killed = Instant::now();
    assert!(a.task.await.unwrap_err().is_cancelled());
    assert!(
        setup.live_leases().await.unwrap() > 0,
        "the killed replica's leases outlive it until they run out"
    );
    // Caught mid-pass; the rest need not be slow.
    fake.slow(Duration::from_millis(10));

    converged(&setup, &fake, V2, LEASE + Duration::from_secs(60)).await;
    eprintln!("upgrade finished {:?} after the kill", killed.elapsed());
    assert_eq!(
        fake.overlaps(),
        Vec::new(),
        "two replicas acted on one tenant at once"
    );

    b.shutdown.cancel();
    b.task.await.unwrap();
    setup.close().await;
    db.drop_db().await;
}

/// A TCP forwarder to PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore: a network partition between one pug and its store.
struct Forwarder {
    port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Forwarder {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn poll(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_the_store_stops_acting_and_resumes_when_it_is_back() {
    let db = TestDb::create("partition").await;
    let key = MasterKey::generate();
    let fake = Fake::start().await;
    fake.slow(Duration::from_millis(100));
    let setup = Store::open(&db.url, key.clone()).await.unwrap();
    create_tenants(&setup, 30, |_| 1).await;
    let mut via = url::Url::parse(&db.url).unwrap();
    let upstream = format!(
        "{}:{}",
        via.host_str().unwrap(),
        via.port_or_known_default().unwrap()
    );
    let forwarder = Forwarder::start(upstream).await;
    via.set_port(Some(forwarder.port)).unwrap();
    let cut_off = TestDb {
        url: via.to_string(),
        ..TestDb::create_named(&db)
    };
    let a = start_pug(&cut_off, &key, &fake, "a").await;
    let a_ready = || a.controller.ready();
    poll(Duration::from_secs(10), "pug a ready", a_ready).await;
    poll(Duration::from_secs(30), "pug a holding a lease", || {
        a.controller.leases.held() > 0
    })
    .await;
    let b = start_pug(&db, &key, &fake, "b").await;

    forwarder.cut();
    // Within its lease, the cut-off pug stops: no pass left, not ready.
    poll(LEASE * 2, "pug a to stop acting", || {
        !a.controller.ready() && a.controller.leases.held() == 0
    })
    .await;
    // The other one takes everything over.
    converged(&setup, &fake, V1, Duration::from_secs(60)).await;
    assert_eq!(
        fake.overlaps(),
        Vec::new(),
        "two replicas acted on one tenant at once"
    );

    forwarder.restore();
    poll(Duration::from_secs(30), "pug a ready again", || {
        a.controller.ready()
    })
    .await;

    for pug in [a, b] {
        pug.shutdown.cancel();
        pug.task.await.unwrap();
    }
    setup.close().await;
    db.drop_db().await;
}

/// The benchmark of `bench/ha/run.sh` (ignored in test runs): `HA_TENANTS` tenants (default
/// 200) to ready with one pug and with two, and the takeover time after a pug holding leases
/// is killed (`HA_KILLS` times, default 5), with the default lease (`controller.lease_ms`).
/// Prints a Markdown table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: bench/ha/run.sh"]
async fn bench_ha() {
    let n: usize = std::env::var("HA_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let kills: usize = std::env::var("HA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let lease = ControllerSettings::from_config(&pug_config::Config::default()).lease;
    let mut rows = Vec::new();
    for pugs in [1usize, 2, 3] {
        let db = TestDb::create(&format!("bench{pugs}")).await;
        let key = MasterKey::generate();
        let fake = Fake::start().await;
        fake.slow(Duration::from_millis(5));
        let setup = Store::open(&db.url, key.clone()).await.unwrap();
        create_tenants(&setup, n, |_| 1).await;
        let started = Instant::now();
        let mut running = Vec::new();
        for i in 0..pugs {
            running.push(start_pug_with(&db, &key, &fake, &format!("{i}"), lease, 16).await);
        }
        converged(&setup, &fake, V1, Duration::from_secs(600)).await;
        let took = started.elapsed();
        assert_eq!(fake.overlaps(), Vec::new());
        rows.push(format!(
            "| {n} tenants to ready, {pugs} pug(s) | {:.2} s | {:.0} tenants/s |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ));
        for pug in running {
            pug.shutdown.cancel();
            pug.task.await.unwrap();
        }
        setup.close().await;
        db.drop_db().await;
    }

    // Takeover: a pug holding leases is killed; how long until the other owns them all.
    let db = TestDb::create("benchkill").await;
    let key = MasterKey::generate();
    let fake = Fake::start().await;
    let setup = Store::open(&db.url, key.clone()).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let ids = create_tenants(&setup, 40, |_| 1).await;
    let b = start_pug_with(&db, &key, &fake, "b", lease, 16).await;
    converged(&setup, &fake, V1, Duration::from_secs(60)).await;
    let mut times = Vec::new();
    for k in 0..kills {
        let name = format!("a{k}");
        // Slow operations keep passes in flight long enough to be killed in one.
        fake.slow(Duration::from_millis(400));
        let a = start_pug_with(&db, &key, &fake, &name, lease, 16).await;
        for id in &ids {
            setup.enqueue(id, pug_store::now_ms()).await.unwrap();
        }
        a.controller.wake();
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.controller.leases.held() == 0 {
            assert!(Instant::now() < deadline, "pug {name} never took a lease");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        a.task.abort();
        let killed = Instant::now();
        let owner = format!("pug-{name}");
        loop {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM work_queue WHERE owner = $1")
                .bind(&owner)
                .fetch_one(&mut admin)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "never taken over"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed.elapsed());
        fake.slow(Duration::ZERO);
        converged(&setup, &fake, V1, Duration::from_secs(60)).await;
    }
    assert_eq!(fake.overlaps(), Vec::new());
    times.sort();
    let max = times.last().copied().unwrap_or_default();
    let median = times[times.len() / 2];
    rows.push(format!(
        "| takeover after kill -9 (lease {} ms), {} kills | median {:.2} s, max {:.2} s | target < 5 s |",
        lease.as_millis(),
        times.len(),
        median.as_secs_f64(),
        max.as_secs_f64()
    ));
    b.shutdown.cancel();
    b.task.await.unwrap();
    setup.close().await;
    drop(admin);
    db.drop_db().await;
    println!("| measure | result | |\n|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
