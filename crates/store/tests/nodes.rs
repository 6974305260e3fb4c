//! The outbox shared by several nodes, on both backends: each node's events, recovery and
//! count are its own; a survivor adopts a dead node's pending events, exactly once; an
//! operator's requeue goes to the node that received it.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use common::{backends, event};
use store::{
    EventAttempt, OutboxEvent, Requeue, Store, WriteOp, EVENT_DELIVERED, EVENT_FAILED,
    EVENT_PENDING,
};

fn ids(events: &[(i64, OutboxEvent)]) -> Vec<String> {
    events.iter().map(|(_, e)| e.event_id.clone()).collect()
}

fn failed(mut e: OutboxEvent) -> OutboxEvent {
    e.state = EVENT_FAILED.to_owned();
    e.attempts = 10;
    e
}

#[test]
fn each_node_sees_its_own_pending_events() {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let a = backend.open("node-a");
        let b = backend.open("node-b");
        a.insert_events(&[event("x", 1, 10), event("x", 2, 11)])
            .unwrap();
        b.insert_events(&[event("y", 1, 12)]).unwrap();
        a.insert_events(&[event("x", 3, 13)]).unwrap();
        // A retried insert from another node leaves the event with the node that stored it.
        b.insert_events(&[event("x", 1, 10)]).unwrap();

        assert_eq!(
            ids(&a.pending_events(0, 100).unwrap()),
            ["x-1", "x-2", "x-3"]
        );
        assert_eq!(ids(&b.pending_events(0, 100).unwrap()), ["y-1"]);
        assert_eq!(a.pending_event_count().unwrap(), 3);
        assert_eq!(b.pending_event_count().unwrap(), 1);
        // Paging by id skips the other node's rows in between.
        let first = a.pending_events(0, 1).unwrap();
        let rest = a.pending_events(first[0].0, 100).unwrap();
        assert_eq!(ids(&rest), ["x-2", "x-3"]);

        // Reading and recording attempts work across nodes.
        assert!(b.get_event("x-2").unwrap().is_some());
        assert_eq!(b.events_of_call("x", 10).unwrap().len(), 3);
        let delivered = EventAttempt {
            event_id: "x-1".into(),
            state: EVENT_DELIVERED.into(),
            attempts: 1,
            next_attempt_at: 10,
            last_status: Some(200),
            last_error: None,
            delivered_at: Some(20),
        };
        b.apply(&[WriteOp::EventAttempt(Box::new(delivered))])
            .unwrap();
        assert_eq!(ids(&a.pending_events(0, 100).unwrap()), ["x-2", "x-3"]);

        let mut nodes = a.outbox_nodes().unwrap();
        assert_eq!(nodes, ["node-a", "node-b"]);
        // A node whose events are all settled holds nothing any more.
        b.apply(&[WriteOp::EventAttempt(Box::new(EventAttempt {
            event_id: "y-1".into(),
            ..EventAttempt::default()
        }))])
        .unwrap();
        nodes = b.outbox_nodes().unwrap();
        assert_eq!(nodes, ["node-a"]);
    }
}

#[test]
fn a_survivor_adopts_a_dead_nodes_pending_events() {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let dead = backend.open("dead");
        let survivor = backend.open("survivor");
        dead.insert_events(&[
            event("x", 1, 10),
            event("x", 2, 11),
            failed(event("x", 3, 12)),
        ])
        .unwrap();
        survivor.insert_events(&[event("y", 1, 13)]).unwrap();
        assert_eq!(survivor.outbox_nodes().unwrap(), ["dead", "survivor"]);

        let adopted = survivor.adopt_events("dead").unwrap();
        let adopted: Vec<&str> = adopted.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(adopted, ["x-1", "x-2"], "returned in insertion order");
        // In insertion order, among the survivor's own.
        assert_eq!(
            ids(&survivor.pending_events(0, 100).unwrap()),
            ["x-1", "x-2", "y-1"]
        );
        assert_eq!(survivor.pending_event_count().unwrap(), 3);
        assert_eq!(dead.pending_event_count().unwrap(), 0);
        assert_eq!(survivor.outbox_nodes().unwrap(), ["survivor"]);
        // Nothing left to adopt; adopting oneself or an unknown node moves nothing.
        assert!(survivor.adopt_events("dead").unwrap().is_empty());
        assert!(survivor.adopt_events("survivor").unwrap().is_empty());
        assert!(survivor.adopt_events("nobody").unwrap().is_empty());
        // The failed event stays where it was; the operator's requeue makes it pending
        // again for the node that took the request.
        match survivor.requeue_event("x-3", 99).unwrap() {
            Requeue::Requeued(e) => assert_eq!(e.state, EVENT_PENDING),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ids(&survivor.pending_events(0, 100).unwrap()),
            ["x-1", "x-2", "x-3", "y-1"]
        );
        assert!(dead.pending_events(0, 100).unwrap().is_empty());
    }
}

#[test]
fn a_requeue_goes_to_the_node_that_received_it() {
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let a = backend.open("node-a");
        let b = backend.open("node-b");
        a.insert_events(&[failed(event("x", 1, 10))]).unwrap();
        assert!(matches!(
            b.requeue_event("x-1", 50).unwrap(),
            Requeue::Requeued(_)
        ));
        assert!(a.pending_events(0, 10).unwrap().is_empty());
        assert_eq!(ids(&b.pending_events(0, 10).unwrap()), ["x-1"]);
        assert_eq!(
            (
                a.pending_event_count().unwrap(),
                b.pending_event_count().unwrap()
            ),
            (0, 1)
        );
        // Requeued twice at once from both nodes: one wins, the other is told it is pending.
        a.apply(&[WriteOp::EventAttempt(Box::new(EventAttempt {
            event_id: "x-1".into(),
            state: EVENT_FAILED.into(),
            ..EventAttempt::default()
        }))])
        .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<Requeue> = [Arc::clone(&a), Arc::clone(&b)]
            .into_iter()
            .map(|store| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    store.requeue_event("x-1", 60).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let requeued = outcomes
            .iter()
            .filter(|o| matches!(o, Requeue::Requeued(_)))
            .count();
        assert_eq!(requeued, 1, "{outcomes:?}");
        assert!(outcomes.contains(&Requeue::NotFailed(EVENT_PENDING.into())));
    }
}

/// Two survivors adopt the same dead node's events at the same moment, many times: every
/// time exactly one of them gets all of them, the other none.
#[test]
fn two_survivors_racing_adopt_exactly_once() {
    const ROUNDS: usize = 50;
    const EVENTS: u32 = 20;
    for backend in backends() {
        eprintln!("--- backend: {}", backend.name);
        let a = backend.open("node-a");
        let b = backend.open("node-b");
        for round in 0..ROUNDS {
            let dead_node = format!("dead-{round}");
            let dead = backend.open(&dead_node);
            let callid = format!("r{round}");
            let events: Vec<OutboxEvent> = (1..=EVENTS)
                .map(|seq| event(&callid, seq, u64::from(seq)))
                .collect();
            dead.insert_events(&events).unwrap();
            drop(dead);

            let barrier = Arc::new(Barrier::new(2));
            let racers: Vec<_> = [Arc::clone(&a), Arc::clone(&b)]
                .into_iter()
                .map(|store| {
                    let (barrier, dead_node) = (Arc::clone(&barrier), dead_node.clone());
                    thread::spawn(move || {
                        barrier.wait();
                        store.adopt_events(&dead_node).unwrap().len() as u64
                    })
                })
                .collect();
            let mut got: Vec<u64> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            got.sort_unstable();
            assert_eq!(got, [0, u64::from(EVENTS)], "round {round}");
            let of = |store: &Arc<dyn Store>| store.events_of_call(&callid, 100).unwrap().len();
            assert_eq!(of(&a), EVENTS as usize);
            // The events are all with one node: its recovery finds them, the other's none.
            let with_a = a
                .pending_events(0, 10_000)
                .unwrap()
                .iter()
                .filter(|(_, e)| e.callid == callid)
                .count();
            let with_b = b
                .pending_events(0, 10_000)
                .unwrap()
                .iter()
                .filter(|(_, e)| e.callid == callid)
                .count();
            let mut split = [with_a, with_b];
            split.sort_unstable();
            assert_eq!(split, [0, EVENTS as usize], "round {round}");
        }
        let nodes = a.outbox_nodes().unwrap();
        assert!(nodes.iter().all(|n| !n.starts_with("dead-")), "{nodes:?}");
    }
}
