//! Runs a store test on SQLite and on PostgreSQL.
//!
//! `both_backends!(case)` turns `async fn case(db: &TestDb)` into `case::sqlite` and
//! `case::postgres`; the PostgreSQL one is skipped (saying why, failing when CI=true) when no
//! server is reachable.

use scheduler::store::testing::{self, TestDb};

pub async fn sqlite() -> TestDb {
    testing::sqlite().await.expect("a temp SQLite database")
}

pub async fn postgres() -> Option<TestDb> {
    match testing::postgres().await {
        Ok(db) => Some(db),
        Err(why) => {
            crate::require("PostgreSQL", false, &why);
            None
        }
    }
}

#[macro_export]
macro_rules! both_backends {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = $crate::store_common::sqlite().await;
                super::$case(&db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = $crate::store_common::postgres().await else { return };
                super::$case(&db).await;
            }
        }
    )+};
}
