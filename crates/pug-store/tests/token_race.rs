//! Two revocations racing for the last two admin tokens, on PostgreSQL (where each statement
//! alone would see the other token still there) and on SQLite: one succeeds, and an admin token
//! always remains. And several pugs starting at once on a fresh store: exactly one makes the
//! first admin token. PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role
//! `.ci/run` creates).

mod common;

use pug_store::{Role, Store};

/// Rounds of: exactly two admin tokens, both revoked at once.
const ROUNDS: usize = 30;

async fn race(store: &Store) {
    let mut survivor = "first".to_owned();
    store.create_token(&survivor, Role::Admin).await.unwrap();
    for round in 0..ROUNDS {
        let other = format!("t{round}");
        store.create_token(&other, Role::Admin).await.unwrap();
        let (ra, rb) = tokio::join!(store.revoke_token(&survivor), store.revoke_token(&other));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let left: Vec<String> = store
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.role == Role::Admin)
            .map(|t| t.name)
            .collect();
        assert_eq!(
            left.len(),
            1,
            "round {round}: admin tokens left {left:?} after {ra:?} / {rb:?}"
        );
        assert!(ra.is_ok() != rb.is_ok(), "round {round}: {ra:?} / {rb:?}");
        survivor = left.into_iter().next().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_never_remove_the_last_admin_token_on_postgres() {
    common::on_postgres("token_race", |store| async move { race(&store).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_revocations_never_remove_the_last_admin_token_on_sqlite() {
    common::on_sqlite(|store| async move { race(&store).await }).await;
}

/// Eight pugs' starts at once, each asking for the first admin token: one gets it.
async fn first_admin(store: &Store) {
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = store.clone();
        starts.spawn(async move { store.create_first_admin_token().await.unwrap() });
    }
    let made = starts
        .join_all()
        .await
        .into_iter()
        .filter(Option::is_some)
        .count();
    assert_eq!(made, 1, "exactly one start makes the first admin token");
    let admins = store.tokens().await.unwrap();
    assert_eq!(admins.len(), 1, "{admins:?}");
    assert_eq!(
        store.create_first_admin_token().await.unwrap().map(|_| ()),
        None,
        "a later start makes none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_starts_make_one_first_admin_token_on_postgres() {
    common::on_postgres(
        "first_admin",
        |store| async move { first_admin(&store).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_starts_make_one_first_admin_token_on_sqlite() {
    common::on_sqlite(|store| async move { first_admin(&store).await }).await;
}
