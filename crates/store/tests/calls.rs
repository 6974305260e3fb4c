//! Call records: upsert and get, listing with filters and cursors, export, retention.

mod common;

use std::sync::atomic::Ordering;

use common::{all_pages, backends, ids, on_each, row, temp_store, Probe};
use store::{CallFilter, CallRow, Export, SqliteStore, Store, StoreError, MAX_LIMIT};

#[test]
fn upsert_then_get_then_update() {
    on_each(|store| {
        assert_eq!(store.get_call("1").unwrap(), None);

        let mut live = row("1", "1001", 1_000);
        live.state = "answered".into();
        live.ended_at = None;
        live.talk_ms = None;
        live.ended_by = None;
        live.end_cause = None;
        live.sip_reason = None;
        live.media = None;
        live.data = None;
        store.upsert_calls(std::slice::from_ref(&live)).unwrap();
        assert_eq!(store.get_call("1").unwrap().as_ref(), Some(&live));

        let ended = row("1", "1001", 1_000);
        store.upsert_calls(std::slice::from_ref(&ended)).unwrap();
        assert_eq!(store.get_call("1").unwrap().as_ref(), Some(&ended));
        let page = store.list_calls(&CallFilter::default(), 10, None).unwrap();
        assert_eq!(page.calls, [ended]);
    });
}

/// makecall's `data` is an opaque string (SPEC.md): any Unicode, the NUL character included
/// (JSON's `"\u0000"`), comes back as it went in on every backend.
#[test]
fn data_is_kept_byte_for_byte_nul_included() {
    on_each(|store| {
        let mut call = row("1", "1001", 1_000);
        call.data = Some("a\u{0}b\u{0}\u{1F4DE}\\0 é".into());
        store.upsert_calls(std::slice::from_ref(&call)).unwrap();
        assert_eq!(store.get_call("1").unwrap().as_ref(), Some(&call));
        let page = store.list_calls(&CallFilter::default(), 10, None).unwrap();
        assert_eq!(page.calls, [call]);
    });
}

#[test]
fn a_batch_is_one_transaction() {
    on_each(|store| {
        let good = row("good", "1001", 1_000);
        let bad = common::out_of_range("bad");
        let error = store.upsert_calls(&[good, bad]).unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::OutOfRange {
                    field: "created_at",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(store.get_call("good").unwrap(), None);
    });
}

#[test]
fn records_serialise_with_the_api_names() {
    let json = serde_json::to_value(row("1", "1001", 1_000)).unwrap();
    for field in [
        "callid",
        "telnum",
        "caller",
        "callee",
        "data",
        "state",
        "created_at",
        "invite_at",
        "ringing_at",
        "answered_at",
        "ended_at",
        "ring_ms",
        "talk_ms",
        "leg_a_code",
        "leg_b_code",
        "ended_by",
        "end_cause",
        "sip_reason",
        "media",
    ] {
        assert!(json.get(field).is_some(), "{field}");
    }
    assert_eq!(json["media"]["a_to_b"]["dropped"], 2);
    let back: CallRow = serde_json::from_value(json).unwrap();
    assert_eq!(back, row("1", "1001", 1_000));
}

/// 60 records over three telnums (one stored with '+'), two states, some sharing a
/// `created_at`.
fn sample() -> Vec<CallRow> {
    (0..60u64)
        .map(|i| {
            let telnum = ["1001", "+1002", "1003"][(i % 3) as usize];
            // Pairs share a timestamp: the callid breaks the tie.
            let mut r = row(&format!("c{i:03}"), telnum, 10_000 + (i / 2) * 100);
            if i % 4 == 0 {
                r.state = "answered".into();
                r.ended_at = None;
            }
            r
        })
        .collect()
}

/// What a listing of `filter` must return: the model's answer.
fn expected(rows: &[CallRow], filter: &CallFilter) -> Vec<String> {
    let norm = |t: &str| t.trim_start_matches('+').to_owned();
    let mut hits: Vec<&CallRow> = rows
        .iter()
        .filter(|r| {
            filter
                .telnum
                .as_ref()
                .is_none_or(|t| norm(t) == norm(&r.telnum))
        })
        .filter(|r| filter.state.as_ref().is_none_or(|s| *s == r.state))
        .filter(|r| filter.since.is_none_or(|s| r.created_at >= s))
        .filter(|r| filter.until.is_none_or(|u| r.created_at < u))
        .collect();
    hits.sort_by(|a, b| (b.created_at, &b.callid).cmp(&(a.created_at, &a.callid)));
    hits.iter().map(|r| r.callid.clone()).collect()
}

fn filters() -> Vec<CallFilter> {
    let mut filters = Vec::new();
    for telnum in [None, Some("1002"), Some("+1001")] {
        for state in [None, Some("answered"), Some("ended"), Some("intent")] {
            for (since, until) in [
                (None, None),
                (Some(11_000), None),
                (None, Some(12_000)),
                (Some(10_500), Some(12_500)),
            ] {
                filters.push(CallFilter {
                    telnum: telnum.map(Into::into),
                    state: state.map(Into::into),
                    since,
                    until,
                });
            }
        }
    }
    filters
}

#[test]
fn listing_is_newest_first_with_every_filter_and_across_pages() {
    on_each(|store| {
        let rows = sample();
        store.upsert_calls(&rows).unwrap();

        for filter in filters() {
            let want = expected(&rows, &filter);
            // One big page.
            let page = store.list_calls(&filter, 1000, None).unwrap();
            assert_eq!(ids(&page.calls), want, "{filter:?}");
            assert_eq!(page.next_cursor, None);
            // Pages of 4: the same rows in the same order, no page empty, the last without cursor.
            let pages = all_pages(store, &filter, 4);
            let paged: Vec<String> = pages.iter().flat_map(|p| ids(&p.calls)).collect();
            assert_eq!(paged, want, "{filter:?}");
            assert!(pages.iter().all(|p| p.calls.len() <= 4));
            assert!(pages.len() == 1 || pages.iter().all(|p| !p.calls.is_empty()));
        }
    });
}

#[test]
fn the_telnum_filter_ignores_a_leading_plus() {
    on_each(|store| {
        store.upsert_calls(&sample()).unwrap();
        for telnum in ["1002", "+1002"] {
            let filter = CallFilter {
                telnum: Some(telnum.into()),
                ..CallFilter::default()
            };
            let page = store.list_calls(&filter, 1000, None).unwrap();
            assert_eq!(page.calls.len(), 20);
            // Stored as written.
            assert!(page.calls.iter().all(|r| r.telnum == "+1002"));
        }
    });
}

#[test]
fn equal_timestamps_are_ordered_by_callid() {
    on_each(|store| {
        let rows: Vec<CallRow> = (0..10)
            .map(|i| row(&format!("t{i}"), "1001", 5_000))
            .collect();
        store.upsert_calls(&rows).unwrap();
        let pages = all_pages(store, &CallFilter::default(), 3);
        assert_eq!(pages.len(), 4);
        let got: Vec<String> = pages.iter().flat_map(|p| ids(&p.calls)).collect();
        let want: Vec<String> = (0..10).rev().map(|i| format!("t{i}")).collect();
        assert_eq!(got, want);
    });
}

#[test]
fn pages_are_stable_while_newer_records_arrive() {
    on_each(|store| {
        let first: Vec<CallRow> = (0..250u64)
            .map(|i| row(&format!("a{i:03}"), "1001", 1_000_000 + i * 10))
            .collect();
        store.upsert_calls(&first).unwrap();
        let filter = CallFilter {
            telnum: Some("1001".into()),
            ..CallFilter::default()
        };
        let want = expected(&first, &filter);

        let mut got = Vec::new();
        let mut cursor: Option<String> = None;
        let mut round = 0u64;
        loop {
            let page = store.list_calls(&filter, 100, cursor.as_deref()).unwrap();
            got.extend(ids(&page.calls));
            // Between page requests, newer calls of the same user end and are written.
            let newer: Vec<CallRow> = (0..30u64)
                .map(|i| {
                    row(
                        &format!("n{round}-{i}"),
                        "1001",
                        2_000_000 + round * 1_000 + i,
                    )
                })
                .collect();
            store.upsert_calls(&newer).unwrap();
            round += 1;
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(round, 3);
        assert_eq!(got, want);
    });
}

#[test]
fn limit_is_clamped() {
    on_each(|store| {
        let rows: Vec<CallRow> = (0..1_050u64)
            .map(|i| row(&format!("{i:05}"), "1001", i))
            .collect();
        store.upsert_calls(&rows).unwrap();
        let page = store
            .list_calls(&CallFilter::default(), 5_000, None)
            .unwrap();
        assert_eq!(page.calls.len(), MAX_LIMIT);
        assert!(page.next_cursor.is_some());
        let page = store.list_calls(&CallFilter::default(), 0, None).unwrap();
        assert_eq!(ids(&page.calls), ["01049"]);
    });
}

#[test]
fn filters_at_the_edges_of_the_range_do_not_fail() {
    on_each(|store| {
        store.upsert_calls(&sample()).unwrap();
        let filter = CallFilter {
            since: Some(u64::MAX),
            ..CallFilter::default()
        };
        assert!(store
            .list_calls(&filter, 10, None)
            .unwrap()
            .calls
            .is_empty());
        let filter = CallFilter {
            until: Some(u64::MAX),
            ..CallFilter::default()
        };
        assert_eq!(
            store.list_calls(&filter, 100, None).unwrap().calls.len(),
            60
        );
        let filter = CallFilter {
            telnum: Some(String::new()),
            state: Some("no such state".into()),
            ..CallFilter::default()
        };
        assert!(store
            .list_calls(&filter, 10, None)
            .unwrap()
            .calls
            .is_empty());
    });
}

#[test]
fn a_malformed_cursor_is_an_error() {
    on_each(|store| {
        store.upsert_calls(&sample()).unwrap();
        for bad in [
            "garbage",
            "",
            "1.5.zz",
            "1.-1.00",
            "1.18446744073709551615.61",
            "1.0.00",
        ] {
            assert!(
                matches!(
                    store.list_calls(&CallFilter::default(), 10, Some(bad)),
                    Err(StoreError::BadCursor)
                ),
                "{bad:?}"
            );
        }
        // A well-formed cursor past everything is simply the end.
        let page = store
            .list_calls(&CallFilter::default(), 10, Some("1.0.30"))
            .unwrap();
        assert!(page.calls.is_empty());
        assert_eq!(page.next_cursor, None);
    });
}

#[test]
fn every_listing_walks_an_index_without_sorting() {
    let (_dir, store) = temp_store();
    for filter in filters() {
        for with_cursor in [false, true] {
            let plan = store.list_plan(&filter, with_cursor).unwrap();
            let text = plan.join(" | ");
            assert!(!text.contains("TEMP B-TREE"), "{filter:?}: {text}");
            assert!(text.contains("USING INDEX"), "{filter:?}: {text}");
            let open = filter.state.as_deref().is_some_and(|s| s != "ended");
            let index = match (filter.telnum.is_some(), open) {
                (true, true) => Some("calls_telnum_open (<expr>=? AND state=?"),
                (true, false) => Some("calls_telnum (<expr>=?"),
                (false, true) => Some("calls_open (state=?"),
                (false, false) => None,
            };
            if let Some(index) = index {
                assert!(
                    text.contains(&format!("SEARCH calls USING INDEX {index}")),
                    "{filter:?}: {text}"
                );
            }
        }
    }
}

#[test]
fn export_yields_the_pages_rows_one_page_at_a_time() {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let inner = backend.open("");
        let rows: Vec<CallRow> = (0..3_000u64)
            .map(|i| {
                let telnum = if i % 2 == 0 { "1001" } else { "1002" };
                row(&format!("{i:06}"), telnum, 1_000 + i / 3)
            })
            .collect();
        for chunk in rows.chunks(500) {
            inner.upsert_calls(chunk).unwrap();
        }
        let probe = Probe::new(inner);

        for filter in [
            CallFilter::default(),
            CallFilter {
                telnum: Some("+1002".into()),
                ..CallFilter::default()
            },
        ] {
            let paged: Vec<CallRow> = all_pages(&probe, &filter, 100)
                .into_iter()
                .flat_map(|p| p.calls)
                .collect();
            probe.lists.store(0, Ordering::Relaxed);
            probe.max_limit.store(0, Ordering::Relaxed);

            let mut export = Export::new(&probe, filter.clone()).page_size(250);
            for want in &paged {
                assert_eq!(&export.next().unwrap().unwrap(), want);
            }
            assert!(export.next().is_none());
            let exported = paged.len();
            assert_eq!(exported, expected(&rows, &filter).len());
            // Never more than a page asked for, and as many pages as rows / page.
            assert_eq!(probe.max_limit.load(Ordering::Relaxed), 250);
            assert_eq!(probe.lists.load(Ordering::Relaxed), exported.div_ceil(250));
        }
    }
}

#[test]
fn export_stops_after_an_error() {
    struct Broken;
    impl Store for Broken {
        fn apply(&self, _: &[store::WriteOp]) -> Result<(), StoreError> {
            Ok(())
        }
        fn upsert_calls(&self, _: &[CallRow]) -> Result<(), StoreError> {
            Ok(())
        }
        fn get_call(&self, _: &str) -> Result<Option<CallRow>, StoreError> {
            Ok(None)
        }
        fn list_calls(
            &self,
            _: &CallFilter,
            _: usize,
            _: Option<&str>,
        ) -> Result<store::Page, StoreError> {
            Err(StoreError::BadCursor)
        }
        fn sweep_calls(&self, _: u64, _: usize) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn delete_number(&self, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn numbers(&self, _: Option<&str>) -> Result<Vec<store::NumberAssignment>, StoreError> {
            Ok(Vec::new())
        }
        fn lookup_idempotency(
            &self,
            _: &str,
            _: &str,
            _: &[u8],
            _: u64,
        ) -> Result<store::IdempotencyLookup, StoreError> {
            Ok(store::IdempotencyLookup::Miss)
        }
        fn sweep_idempotency(&self, _: u64, _: usize) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn insert_events(&self, _: &[store::OutboxEvent]) -> Result<(), StoreError> {
            Ok(())
        }
        fn pending_events(
            &self,
            _: i64,
            _: usize,
        ) -> Result<Vec<(i64, store::OutboxEvent)>, StoreError> {
            Ok(Vec::new())
        }
        fn pending_event_count(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn adopt_events(&self, _: &str) -> Result<Vec<store::OutboxEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn outbox_nodes(&self) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
        fn events_of_call(&self, _: &str, _: usize) -> Result<Vec<store::OutboxEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn get_event(&self, _: &str) -> Result<Option<store::OutboxEvent>, StoreError> {
            Ok(None)
        }
        fn requeue_event(&self, _: &str, _: u64) -> Result<store::Requeue, StoreError> {
            Ok(store::Requeue::Unknown)
        }
        fn sweep_events(&self, _: u64, _: usize) -> Result<u64, StoreError> {
            Ok(0)
        }
    }
    let mut export = Export::new(&Broken, CallFilter::default());
    assert!(matches!(export.next(), Some(Err(StoreError::BadCursor))));
    assert!(export.next().is_none());
}

#[test]
fn retention_deletes_only_records_that_ended_before_the_cutoff() {
    on_each(|store| {
        let mut rows = Vec::new();
        for i in 0..50u64 {
            let mut r = row(&format!("e{i:02}"), "1001", i * 1_000);
            r.ended_at = Some(i * 1_000 + 500);
            rows.push(r);
        }
        for i in 0..5u64 {
            // Old, but not ended (live, or an intent): kept.
            let mut r = row(&format!("live{i}"), "1001", i);
            r.state = "answered".into();
            r.ended_at = None;
            rows.push(r);
        }
        store.upsert_calls(&rows).unwrap();

        // Ended at 500, 1500, ..., 29500 are before 30_000; 30_500 on are not.
        let deleted = store.sweep_calls(30_000, 7).unwrap();
        assert_eq!(deleted, 30);
        let left: Vec<CallRow> = all_pages(store, &CallFilter::default(), 1000)
            .into_iter()
            .flat_map(|p| p.calls)
            .collect();
        assert_eq!(left.len(), 25);
        assert!(left.iter().all(|r| r.ended_at.is_none_or(|e| e >= 30_000)));
        assert_eq!(store.sweep_calls(30_000, 7).unwrap(), 0);
        // A chunk that divides the count exactly, and a chunk of 0 (taken as 1).
        assert_eq!(store.sweep_calls(40_000, 5).unwrap(), 10);
        assert_eq!(store.sweep_calls(42_000, 0).unwrap(), 2);
    });
}

#[test]
fn a_memory_store_behaves_the_same() {
    let store = SqliteStore::open_in_memory().unwrap();
    let rows = sample();
    store.upsert_calls(&rows).unwrap();
    let filter = CallFilter {
        telnum: Some("1003".into()),
        ..CallFilter::default()
    };
    let paged: Vec<String> = all_pages(&store, &filter, 7)
        .iter()
        .flat_map(|p| ids(&p.calls))
        .collect();
    assert_eq!(paged, expected(&rows, &filter));
}

/// Byte order, whatever the database's locale: the PostgreSQL test databases have a
/// linguistic (ICU en-US) default collation, under which these would sort otherwise.
#[test]
fn callids_and_numbers_sort_by_their_bytes() {
    on_each(|store| {
        let callids = [
            "a-1", "A1", "a1", "B", "_x", "b", "10", "9", "é", "Z", "a 1",
        ];
        let rows: Vec<CallRow> = callids.iter().map(|c| row(c, "1001", 5_000)).collect();
        store.upsert_calls(&rows).unwrap();
        let mut want: Vec<String> = callids.iter().map(|c| c.to_string()).collect();
        want.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
        let pages = all_pages(store, &CallFilter::default(), 3);
        let got: Vec<String> = pages.iter().flat_map(|p| ids(&p.calls)).collect();
        assert_eq!(got, want);

        for number in ["b1", "B1", "_1", "a1"] {
            store.put_number(number, "1001").unwrap();
        }
        let numbers: Vec<String> = store
            .numbers(None)
            .unwrap()
            .into_iter()
            .map(|a| a.number)
            .collect();
        assert_eq!(numbers, ["B1", "_1", "a1", "b1"]);
    });
}
