//! Number assignments and idempotency keys.

mod common;

use common::on_each;
use store::{
    IdempotencyEntry, IdempotencyLookup, NumberAssignment, StoredResponse, WriteOp,
    IDEMPOTENCY_TTL_MS,
};

fn assignment(number: &str, telnum: &str) -> NumberAssignment {
    NumberAssignment {
        number: number.into(),
        telnum: telnum.into(),
    }
}

#[test]
fn numbers_put_replace_delete_list() {
    on_each(|store| {
        assert!(store.numbers(None).unwrap().is_empty());
        store.put_number("2001", "1001").unwrap();
        store.put_number("+2002", "+1001").unwrap();
        store.put_number("2003", "1009").unwrap();

        let of_1001 = vec![assignment("2001", "1001"), assignment("2002", "1001")];
        assert_eq!(store.numbers(Some("1001")).unwrap(), of_1001);
        assert_eq!(store.numbers(Some("+1001")).unwrap(), of_1001);
        assert!(store.numbers(Some("1002")).unwrap().is_empty());

        // A put replaces: the number moves to its new owner.
        store.put_number("+2001", "1009").unwrap();
        assert_eq!(
            store.numbers(Some("1009")).unwrap(),
            [assignment("2001", "1009"), assignment("2003", "1009")]
        );
        assert_eq!(
            store.numbers(Some("1001")).unwrap(),
            [assignment("2002", "1001")]
        );

        assert!(store.delete_number("+2002").unwrap());
        assert!(!store.delete_number("2002").unwrap());
        assert!(!store.delete_number("9999").unwrap());
        assert_eq!(
            store.numbers(None).unwrap(),
            [assignment("2001", "1009"), assignment("2003", "1009")]
        );

        // The same through the writer's operations, in one transaction.
        store
            .apply(&[
                WriteOp::PutNumber {
                    number: "2004".into(),
                    telnum: "1004".into(),
                },
                WriteOp::DeleteNumber {
                    number: "+2003".into(),
                },
            ])
            .unwrap();
        assert_eq!(
            store.numbers(None).unwrap(),
            [assignment("2001", "1009"), assignment("2004", "1004")]
        );
    });
}

const T0: u64 = 1_764_650_000_000;
const HOUR: u64 = 60 * 60 * 1000;

fn entry(key: &str, hash: &[u8], body: &str, at_ms: u64) -> IdempotencyEntry {
    IdempotencyEntry {
        key: key.into(),
        scope: "POST /api/user/1001/makecall".into(),
        body_hash: hash.to_vec(),
        status: 200,
        body: body.into(),
        at_ms,
    }
}

#[test]
fn idempotency_hit_conflict_miss_and_expiry() {
    on_each(|store| {
        let scope = "POST /api/user/1001/makecall";
        assert_eq!(
            store.lookup_idempotency("k", scope, b"h1", T0).unwrap(),
            IdempotencyLookup::Miss
        );
        store
            .remember_idempotency(&entry("k", b"h1", r#"{"callid":"1"}"#, T0))
            .unwrap();
        let first = IdempotencyLookup::Hit(StoredResponse {
            status: 200,
            body: r#"{"callid":"1"}"#.into(),
        });

        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h1", T0 + HOUR)
                .unwrap(),
            first
        );
        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h2", T0 + HOUR)
                .unwrap(),
            IdempotencyLookup::Conflict
        );
        assert_eq!(
            store
                .lookup_idempotency("k", "POST /api/user/1002/makecall", b"h1", T0)
                .unwrap(),
            IdempotencyLookup::Miss
        );
        assert_eq!(
            store.lookup_idempotency("other", scope, b"h1", T0).unwrap(),
            IdempotencyLookup::Miss
        );

        // A second response for a live key does not replace the first.
        store
            .remember_idempotency(&entry("k", b"h1", r#"{"callid":"2"}"#, T0 + HOUR))
            .unwrap();
        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h1", T0 + 2 * HOUR)
                .unwrap(),
            first
        );

        // Just before 24 h it holds; at 24 h it is gone, for either body.
        let last = T0 + IDEMPOTENCY_TTL_MS - 1;
        assert_eq!(
            store.lookup_idempotency("k", scope, b"h1", last).unwrap(),
            first
        );
        let expired = T0 + IDEMPOTENCY_TTL_MS;
        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h1", expired)
                .unwrap(),
            IdempotencyLookup::Miss
        );
        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h2", expired)
                .unwrap(),
            IdempotencyLookup::Miss
        );

        // After expiry the key starts afresh with a new response.
        store
            .remember_idempotency(&entry("k", b"h2", r#"{"callid":"3"}"#, expired))
            .unwrap();
        assert_eq!(
            store
                .lookup_idempotency("k", scope, b"h2", expired + 1)
                .unwrap(),
            IdempotencyLookup::Hit(StoredResponse {
                status: 200,
                body: r#"{"callid":"3"}"#.into(),
            })
        );
    });
}

#[test]
fn idempotency_sweep_removes_only_expired_entries() {
    on_each(|store| {
        for i in 0..20u64 {
            store
                .remember_idempotency(&entry(&format!("k{i}"), b"h", "{}", T0 + i * HOUR))
                .unwrap();
        }
        // At T0 + 30 h, entries remembered before T0 + 6 h (k0..=k6: k6 is exactly 24 h old) expired.
        let now = T0 + 30 * HOUR;
        assert_eq!(store.sweep_idempotency(now, 3).unwrap(), 7);
        assert_eq!(store.sweep_idempotency(now, 3).unwrap(), 0);
        let scope = "POST /api/user/1001/makecall";
        assert_eq!(
            store
                .lookup_idempotency("k6", scope, b"h", T0 + 6 * HOUR)
                .unwrap(),
            IdempotencyLookup::Miss
        );
        assert!(matches!(
            store.lookup_idempotency("k7", scope, b"h", now).unwrap(),
            IdempotencyLookup::Hit(_)
        ));
    });
}
