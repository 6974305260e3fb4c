//! The webhook outbox: events stored, attempts recorded, recovery paging, requeue, sweep.

mod common;

use std::sync::Arc;

use common::{backends, event, on_each};
use store::{
    EventAttempt, OutboxEvent, Requeue, SqliteStore, Store, WriteOp, Writer, WriterConfig,
    EVENT_DELIVERED, EVENT_DROPPED, EVENT_FAILED, EVENT_PENDING, MAX_LAST_ERROR,
};

fn settled(mut e: OutboxEvent, state: &str) -> OutboxEvent {
    e.state = state.to_owned();
    e
}

fn attempt(event_id: &str, state: &str, attempts: u32) -> EventAttempt {
    EventAttempt {
        event_id: event_id.to_owned(),
        state: state.to_owned(),
        attempts,
        next_attempt_at: 5_000,
        last_status: Some(503),
        last_error: Some("service unavailable".to_owned()),
        delivered_at: None,
    }
}

#[test]
fn inserted_events_read_back_by_id_and_by_call_in_seq_order() {
    on_each(|store| {
        let events = [event("a", 2, 20), event("b", 1, 15), event("a", 1, 10)];
        store.insert_events(&events).unwrap();
        assert_eq!(store.get_event("a-2").unwrap().as_ref(), Some(&events[0]));
        assert_eq!(store.get_event("nope").unwrap(), None);
        let of_a = store.events_of_call("a", 100).unwrap();
        assert_eq!(of_a, [events[2].clone(), events[0].clone()]);
        // limit 0 is taken as 1.
        assert_eq!(store.events_of_call("a", 0).unwrap(), [events[2].clone()]);
        assert!(store.events_of_call("zzz", 10).unwrap().is_empty());
    });
}

#[test]
fn a_duplicate_insert_is_ignored() {
    on_each(|store| {
        let first = event("a", 1, 10);
        store.insert_events(std::slice::from_ref(&first)).unwrap();
        // Same event_id, other content; and same (callid, seq) under another id.
        let mut same_id = first.clone();
        same_id.body = "changed".into();
        let mut same_seq = first.clone();
        same_seq.event_id = "other".into();
        store
            .insert_events(&[same_id, same_seq, event("a", 2, 11)])
            .unwrap();
        assert_eq!(store.get_event("a-1").unwrap(), Some(first));
        assert_eq!(store.get_event("other").unwrap(), None);
        assert_eq!(store.events_of_call("a", 10).unwrap().len(), 2);
    });
}

#[test]
fn an_attempt_applied_directly_updates_the_event_and_ignores_unknown_ids() {
    on_each(|store| {
        store.insert_events(&[event("a", 1, 10)]).unwrap();
        store
            .apply(&[
                WriteOp::EventAttempt(Box::new(attempt("a-1", EVENT_PENDING, 1))),
                WriteOp::EventAttempt(Box::new(attempt("swept", EVENT_FAILED, 3))),
            ])
            .unwrap();
        let e = store.get_event("a-1").unwrap().unwrap();
        assert_eq!(
            (e.state.as_str(), e.attempts, e.next_attempt_at),
            (EVENT_PENDING, 1, 5_000)
        );
        assert_eq!(e.last_status, Some(503));
        assert_eq!(e.last_error.as_deref(), Some("service unavailable"));
        assert_eq!(store.get_event("swept").unwrap(), None);
    });
}

#[test]
fn an_attempt_goes_through_the_writer() {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let sqlite = backend.open("");
        sqlite.insert_events(&[event("a", 1, 10)]).unwrap();
        let writer = Writer::start(Arc::clone(&sqlite), WriterConfig::default()).unwrap();
        let delivered = EventAttempt {
            last_status: Some(200),
            last_error: None,
            delivered_at: Some(4_000),
            ..attempt("a-1", EVENT_DELIVERED, 2)
        };
        writer
            .try_submit(WriteOp::EventAttempt(Box::new(delivered)))
            .unwrap();
        writer.flush().unwrap();
        let e = sqlite.get_event("a-1").unwrap().unwrap();
        assert_eq!(e.state, EVENT_DELIVERED);
        assert_eq!(
            (e.attempts, e.last_status, e.delivered_at),
            (2, Some(200), Some(4_000))
        );
        assert_eq!(e.last_error, None);
        assert_eq!(sqlite.pending_event_count().unwrap(), 0);
        writer.shutdown().unwrap();
    }
}

#[test]
fn pending_events_page_in_insertion_order_across_calls() {
    on_each(|store| {
        // Interleaved calls, inserted in several transactions; one settled in the middle.
        let mut inserted = Vec::new();
        for round in 1..=5u32 {
            let batch: Vec<OutboxEvent> = ["x", "y", "z"]
                .iter()
                .map(|c| event(c, round, u64::from(round) * 10))
                .collect();
            store.insert_events(&batch).unwrap();
            inserted.extend(batch);
        }
        store
            .apply(&[WriteOp::EventAttempt(Box::new(attempt(
                "y-2",
                EVENT_FAILED,
                8,
            )))])
            .unwrap();
        let want: Vec<String> = inserted
            .iter()
            .map(|e| e.event_id.clone())
            .filter(|id| id != "y-2")
            .collect();
        assert_eq!(store.pending_event_count().unwrap(), want.len() as u64);

        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = store.pending_events(after, 4).unwrap();
            assert!(page.len() <= 4);
            let Some(&(last, _)) = page.last() else { break };
            assert!(page.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(page[0].0 > after);
            got.extend(page.into_iter().map(|(_, e)| e.event_id));
            after = last;
        }
        assert_eq!(got, want);
    });
}

#[test]
fn requeue_answers_for_each_state() {
    on_each(|store| {
        let mut failed = settled(event("a", 1, 10), EVENT_FAILED);
        failed.attempts = 8;
        failed.last_status = Some(500);
        failed.last_error = Some("boom".into());
        store
            .insert_events(&[
                failed,
                settled(event("a", 2, 11), EVENT_DROPPED),
                event("a", 3, 12),
                settled(event("a", 4, 13), EVENT_DELIVERED),
            ])
            .unwrap();

        let Requeue::Requeued(e) = store.requeue_event("a-1", 99_000).unwrap() else {
            panic!("a-1 not requeued");
        };
        assert_eq!(
            (e.state.as_str(), e.attempts, e.next_attempt_at),
            (EVENT_PENDING, 0, 99_000)
        );
        assert_eq!(
            (e.last_status, e.last_error.as_deref()),
            (Some(500), Some("boom"))
        );
        assert_eq!(store.get_event("a-1").unwrap(), Some(e));
        assert!(matches!(
            store.requeue_event("a-2", 99_000).unwrap(),
            Requeue::Requeued(ref e) if e.state == EVENT_PENDING
        ));
        assert_eq!(
            store.requeue_event("a-3", 99_000).unwrap(),
            Requeue::NotFailed(EVENT_PENDING.into())
        );
        assert_eq!(
            store.requeue_event("a-4", 99_000).unwrap(),
            Requeue::NotFailed(EVENT_DELIVERED.into())
        );
        assert_eq!(
            store.requeue_event("nope", 99_000).unwrap(),
            Requeue::Unknown
        );
        assert_eq!(store.pending_event_count().unwrap(), 3);
    });
}

#[test]
fn sweep_keeps_pending_and_young_events() {
    on_each(|store| {
        let mut events = Vec::new();
        for i in 0..20u32 {
            let state = [EVENT_DELIVERED, EVENT_FAILED, EVENT_DROPPED][i as usize % 3];
            events.push(settled(event("old", i + 1, u64::from(i)), state));
        }
        events.push(event("old", 100, 0)); // pending, old: kept
        events.push(settled(event("young", 1, 1_000), EVENT_DELIVERED));
        store.insert_events(&events).unwrap();
        assert_eq!(store.sweep_events(500, 7).unwrap(), 20);
        assert_eq!(store.sweep_events(500, 7).unwrap(), 0);
        assert!(store.get_event("old-100").unwrap().is_some());
        assert!(store.get_event("young-1").unwrap().is_some());
        assert_eq!(store.sweep_events(2_000, 0).unwrap(), 1);
        assert_eq!(store.pending_event_count().unwrap(), 1);
    });
}

#[test]
fn last_error_is_cut_at_a_char_boundary() {
    on_each(|store| {
        // 511 bytes, then 'é' (2 bytes) across the cap.
        let long = format!("{}é and more", "e".repeat(MAX_LAST_ERROR - 1));
        let mut e = event("a", 1, 10);
        e.last_error = Some(long.clone());
        store.insert_events(&[e, event("a", 2, 11)]).unwrap();
        let cut = "e".repeat(MAX_LAST_ERROR - 1);
        assert_eq!(
            store.get_event("a-1").unwrap().unwrap().last_error,
            Some(cut.clone())
        );
        let with_error = EventAttempt {
            last_error: Some(long),
            ..attempt("a-2", EVENT_PENDING, 1)
        };
        store
            .apply(&[WriteOp::EventAttempt(Box::new(with_error))])
            .unwrap();
        assert_eq!(
            store.get_event("a-2").unwrap().unwrap().last_error,
            Some(cut)
        );
    });
}

#[test]
fn a_reopened_file_keeps_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let events = [event("a", 1, 10), settled(event("a", 2, 11), EVENT_FAILED)];
    {
        let store = SqliteStore::open(&path).unwrap();
        store.insert_events(&events).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.events_of_call("a", 10).unwrap(), events);
    assert_eq!(store.pending_event_count().unwrap(), 1);
    let pending = store.pending_events(0, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, events[0]);
}
