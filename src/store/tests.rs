//! Store tests: both backends must behave the same.

use super::*;
use crate::task::TaskSpec;

fn spec() -> TaskSpec {
    crate::task::test_spec("agent_action", 5)
}

fn finished(id: u64, at: u64) -> FinishedTask {
    FinishedTask {
        id: TaskId(id),
        status: TaskStatus::Completed,
        task_type: "agent_action".into(),
        priority: 5,
        output: None,
        error: None,
        worker: None,
        agent_id: None,
        attempts: 1,
        created_at: Millis(0),
        completed_at: Millis(at),
    }
}

fn exercise(backend: &dyn Backend) {
    let ops: Vec<Op> = (1..=3)
        .map(|i| {
            Op::InsertTask(PendingTask {
                id: TaskId(i),
                spec: spec(),
                created_at: Millis(i),
            })
        })
        .collect();
    backend.commit(&ops).expect("insert");
    backend
        .commit(&[Op::Finish(finished(2, 100)), Op::Finish(finished(3, 200))])
        .expect("finish");
    let snap = backend.load().expect("load");
    assert_eq!(
        snap.pending.iter().map(|p| p.id.0).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(snap.totals.completed, 2);
    assert_eq!(snap.next_task_id, 4);
    assert!(backend.result(TaskId(2)).expect("read").is_some());
    backend
        .commit(&[Op::PurgeResults {
            before: Millis(150),
        }])
        .expect("purge");
    assert!(backend.result(TaskId(2)).expect("read").is_none());
    assert!(backend.result(TaskId(3)).expect("read").is_some());
    let tok = TokenRecord {
        id: "abc".into(),
        hash: "h".into(),
        kind: TokenKind::Extra,
        created_at: Millis(1),
        expires_at: Some(Millis(5)),
        max_uses: Some(1),
        uses: 0,
        revoked: false,
    };
    backend.commit(&[Op::PutToken(tok.clone())]).expect("token");
    assert_eq!(backend.load().expect("load").tokens["abc"], tok);
}

#[test]
fn mem_backend_semantics() {
    exercise(&MemBackend::default());
}

#[test]
fn redb_backend_semantics_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d8.redb");
    {
        let b = RedbBackend::open(&path).expect("open");
        exercise(&b);
        // A second open of the same file is refused clearly.
        assert!(matches!(
            RedbBackend::open(&path),
            Err(StoreError::Locked(_))
        ));
    }
    let b = RedbBackend::open(&path).expect("reopen");
    let snap = b.load().expect("load");
    assert_eq!(snap.pending.len(), 1);
    assert_eq!(snap.totals.completed, 2);
    assert_eq!(snap.tokens.len(), 1);
}

#[tokio::test]
async fn group_commit_shares_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(RedbBackend::open(&dir.path().join("d8.redb")).expect("open"));
    let (store, _) = Store::open(backend.clone()).expect("store");
    let mut joins = Vec::new();
    for _ in 0..200 {
        let store = store.clone();
        joins.push(tokio::spawn(async move {
            let id = store.allocate_ids(1);
            store
                .commit(vec![Op::InsertTask(PendingTask {
                    id: TaskId(id),
                    spec: spec(),
                    created_at: Millis(0),
                })])
                .await
        }));
    }
    for j in joins {
        j.await.expect("join").expect("commit");
    }
    assert_eq!(backend.load().expect("load").pending.len(), 200);
    assert!(
        store.commits() < 200,
        "{} commits for 200 submits",
        store.commits()
    );
}

#[tokio::test]
async fn commit_errors_reach_the_caller() {
    let backend = Arc::new(MemBackend::default());
    backend.set_failing(true);
    let (store, _) = Store::open(backend).expect("store");
    assert!(
        store
            .commit(vec![Op::PurgeResults { before: Millis(0) }])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn failed_commits_hand_their_ops_back_in_order() {
    let backend = Arc::new(MemBackend::default());
    let (store, _) = Store::open(backend.clone()).expect("store");
    backend.set_failing(true);
    let a = vec![Op::Finish(finished(1, 10)), Op::Finish(finished(2, 10))];
    let b = vec![Op::Finish(finished(3, 10))];
    let (ra, rb) = tokio::join!(
        store.commit_or_return(a.clone()),
        store.commit_or_return(b.clone())
    );
    assert_eq!(ra.expect_err("fails").1, a);
    assert_eq!(rb.expect_err("fails").1, b);
    backend.set_failing(false);
    store.commit_or_return(a).await.expect("retry succeeds");
    assert!(backend.result(TaskId(2)).expect("read").is_some());
}

#[test]
fn databases_of_another_format_are_refused() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("d8.redb");
    drop(RedbBackend::open(&path).expect("new file gets our format"));
    drop(RedbBackend::open(&path).expect("and reopens"));
    {
        let db = redb::Database::create(&path).expect("raw open");
        let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
        let txn = db.begin_write().expect("txn");
        txn.open_table(meta)
            .expect("meta")
            .insert("format", 99)
            .expect("insert");
        txn.commit().expect("commit");
        let _ = db.begin_read();
    }
    match RedbBackend::open(&path) {
        Err(e @ StoreError::Incompatible { found: 99, .. }) => {
            assert!(e.to_string().contains("new --data-dir"), "{e}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
}
