//! Two revocations racing for the last two admin tokens, on PostgreSQL (where each statement
//! alone would see the other token still there) and on SQLite: one succeeds, and an admin token
//! always remains. PostgreSQL from `PUG_TEST_POSTGRES_URL` (default: the `pugtest` role
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
