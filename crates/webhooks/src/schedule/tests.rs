use super::*;

fn event(callid: &str, seq: u32) -> OutboxEvent {
    OutboxEvent {
        event_id: format!("evt_{callid}_{seq}"),
        callid: callid.to_owned(),
        seq,
        event: "call.ringing".into(),
        target: "http://127.0.0.1:9/hook".into(),
        body: format!("{{\"seq\":{seq}}}"),
        created_at: 1_000,
        state: EVENT_PENDING.into(),
        ..OutboxEvent::default()
    }
}

fn schedule(config: ScheduleConfig) -> Schedule {
    Schedule::new(config, 7)
}

fn push(s: &mut Schedule, now: Instant, callid: &str, seq: u32) -> Vec<Settled> {
    let e = event(callid, seq);
    let body = Bytes::from(e.body.clone());
    s.push(now, e, body, now)
}

fn sends(s: &mut Schedule, now: Instant) -> Vec<(String, u32, u32)> {
    std::iter::from_fn(|| s.poll_send(now))
        .map(|send| {
            let seq = send.event_id.rsplit('_').next().unwrap().parse().unwrap();
            (send.callid, seq, send.attempt)
        })
        .collect()
}

fn no_of(s: &mut Schedule, now: Instant) -> u64 {
    s.poll_send(now).expect("a send is due").no
}

fn failed() -> Outcome {
    Outcome::Failed {
        status: Some(503),
        error: "HTTP 503".into(),
    }
}

const OK: Outcome = Outcome::Delivered { status: 200 };

#[test]
fn a_call_has_one_event_on_the_wire_and_calls_go_in_parallel() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig::default());
    for seq in 1..=3 {
        push(&mut s, t0, "a", seq);
    }
    push(&mut s, t0, "b", 1);
    let first = sends(&mut s, t0);
    assert_eq!(first, vec![("a".into(), 1, 1), ("b".into(), 1, 1)]);
    assert_eq!(s.in_flight(), 2);
    assert_eq!(
        s.poll_timeout(),
        None,
        "nothing else can go before an outcome"
    );
    // a's second event waits for the first's outcome; then goes at once.
    let settled = s.on_outcome(t0, 0, OK).unwrap();
    assert_eq!((settled.state, settled.attempts), (EVENT_DELIVERED, 1));
    assert_eq!(settled.last_status, Some(200));
    assert_eq!(sends(&mut s, t0), vec![("a".into(), 2, 1)]);
    assert_eq!(s.len(), 3);
    assert_eq!(s.call_count(), 2);
}

#[test]
fn a_failure_is_retried_after_the_backoff_and_holds_the_call_back() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig::default());
    push(&mut s, t0, "a", 1);
    push(&mut s, t0, "a", 2);
    push(&mut s, t0, "b", 1);
    let a1 = no_of(&mut s, t0);
    let b1 = no_of(&mut s, t0);
    // Three failures of a's first event: waits of about 1, 2 and 4 s (±20 %).
    let mut now = t0;
    for (failures, nominal) in [(1u32, 1000u64), (2, 2000), (3, 4000)] {
        let settled = s.on_outcome(now, a1, failed()).unwrap();
        assert_eq!(settled.state, EVENT_PENDING);
        assert_eq!(settled.attempts, failures);
        assert_eq!(settled.last_status, Some(503));
        let retry_at = settled.retry_at.unwrap();
        let wait = retry_at - now;
        assert!(wait >= Duration::from_millis(nominal * 8 / 10), "{wait:?}");
        assert!(wait < Duration::from_millis(nominal * 12 / 10), "{wait:?}");
        assert_eq!(s.poll_timeout(), Some(retry_at));
        // Nothing of a goes before its retry is due, a's second event included.
        assert!(s.poll_send(retry_at - Duration::from_millis(1)).is_none());
        now = retry_at;
        let send = s.poll_send(now).unwrap();
        assert_eq!((send.no, send.attempt), (a1, failures + 1));
    }
    // b was never held back by a.
    assert!(s.on_outcome(now, b1, OK).is_some());
    s.on_outcome(now, a1, OK).unwrap();
    assert_eq!(sends(&mut s, now), vec![("a".into(), 2, 1)]);
}

#[test]
fn given_up_after_max_attempts_and_the_next_event_goes() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_attempts: 2,
        ..ScheduleConfig::default()
    });
    push(&mut s, t0, "a", 1);
    push(&mut s, t0, "a", 2);
    let a1 = no_of(&mut s, t0);
    let retry = s.on_outcome(t0, a1, failed()).unwrap().retry_at.unwrap();
    assert_eq!(s.poll_send(retry).unwrap().attempt, 2);
    let settled = s
        .on_outcome(
            retry,
            a1,
            Outcome::Failed {
                status: None,
                error: "timed out".into(),
            },
        )
        .unwrap();
    assert_eq!(settled.state, EVENT_FAILED);
    assert_eq!(settled.attempts, 2);
    assert_eq!(settled.last_status, None);
    assert_eq!(settled.last_error.as_deref(), Some("timed out"));
    assert_eq!(sends(&mut s, retry), vec![("a".into(), 2, 1)]);
}

#[test]
fn a_hung_target_holds_only_its_own_slots() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_in_flight: 4,
        max_in_flight_per_target: 2,
        ..ScheduleConfig::default()
    });
    let to = |s: &mut Schedule, call: &str, target: &str| {
        let mut e = event(call, 1);
        e.target = target.to_owned();
        s.push(t0, e, Bytes::new(), t0)
    };
    // Three calls to the hung target, then one to a healthy one (another port: another
    // target).
    for call in ["h1", "h2", "h3"] {
        to(&mut s, call, "http://10.0.0.9:8080/hook?app=1");
    }
    to(&mut s, "ok", "http://10.0.0.9:8081/hook");
    let sent = sends(&mut s, t0);
    assert_eq!(
        sent.iter().map(|(c, _, _)| c.as_str()).collect::<Vec<_>>(),
        ["h1", "h2", "ok"],
        "the third event of the hung target waits; the healthy one goes"
    );
    assert_eq!(s.in_flight(), 3);
    assert_eq!(s.target_count(), 2);
    assert!(s.poll_send(t0).is_none());
    // One of the hung target's requests ends: its waiting head goes, in its place.
    let h1 = 0;
    s.on_outcome(t0, h1, failed()).unwrap();
    assert_eq!(sends(&mut s, t0), vec![("h3".into(), 1, 1)]);
    // The healthy target's outcome frees its own line.
    s.on_outcome(t0, 3, OK).unwrap();
    assert_eq!(s.target_count(), 1);
    assert_eq!(
        target_key("https://a.example:8443/x?y"),
        "https://a.example:8443"
    );
    assert_eq!(target_key("http://a.example"), "http://a.example");
}

#[test]
fn at_most_max_in_flight_on_the_wire() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_in_flight: 2,
        ..ScheduleConfig::default()
    });
    for call in ["a", "b", "c"] {
        push(&mut s, t0, call, 1);
    }
    assert_eq!(sends(&mut s, t0).len(), 2);
    assert_eq!(s.poll_timeout(), None);
    s.on_outcome(t0, 0, OK).unwrap();
    assert_eq!(s.poll_timeout(), Some(t0));
    assert_eq!(sends(&mut s, t0), vec![("c".into(), 1, 1)]);
}

#[test]
fn beyond_max_pending_the_oldest_not_on_the_wire_is_dropped() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_pending: 3,
        ..ScheduleConfig::default()
    });
    push(&mut s, t0, "a", 1);
    push(&mut s, t0, "a", 2);
    push(&mut s, t0, "b", 1);
    let a1 = no_of(&mut s, t0); // a1 on the wire
    let dropped = push(&mut s, t0, "c", 1);
    // a1 is the oldest but on the wire: a2 goes instead.
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].event_id, "evt_a_2");
    assert_eq!(dropped[0].state, EVENT_DROPPED);
    assert_eq!(s.len(), 3);
    s.on_outcome(t0, a1, OK).unwrap();
    // a has nothing left; b and c go.
    assert_eq!(
        sends(&mut s, t0),
        vec![("b".into(), 1, 1), ("c".into(), 1, 1)]
    );
    assert_eq!(s.call_count(), 2);
}

#[test]
fn dropping_a_waiting_head_lets_the_next_event_of_its_call_go() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_pending: 2,
        ..ScheduleConfig::default()
    });
    push(&mut s, t0, "a", 1);
    let a1 = no_of(&mut s, t0);
    let retry = s.on_outcome(t0, a1, failed()).unwrap().retry_at.unwrap();
    push(&mut s, t0, "a", 2);
    // a1 waits for its retry (not on the wire): it is the one dropped.
    let dropped = push(&mut s, t0, "b", 1);
    assert_eq!(dropped[0].event_id, "evt_a_1");
    assert_eq!(dropped[0].attempts, 1);
    assert_eq!(
        sends(&mut s, t0),
        vec![("a".into(), 2, 1), ("b".into(), 1, 1)]
    );
    // The stale retry entry does nothing when its time comes.
    assert!(s.poll_send(retry).is_none());
}

#[test]
fn stale_outcomes_and_recovered_attempts() {
    let t0 = Instant::now();
    let mut s = schedule(ScheduleConfig {
        max_attempts: 3,
        ..ScheduleConfig::default()
    });
    assert!(s.on_outcome(t0, 99, OK).is_none());
    // Recovered with 2 attempts made, due in 5 s: its third is its last.
    let mut e = event("a", 1);
    e.attempts = 2;
    let due = t0 + Duration::from_secs(5);
    s.push(t0, e, Bytes::new(), due);
    assert!(s.poll_send(t0).is_none());
    assert_eq!(s.poll_timeout(), Some(due));
    let send = s.poll_send(due).unwrap();
    assert_eq!(send.attempt, 3);
    // An outcome for an event not on the wire is ignored.
    assert!(s.on_outcome(due, send.no + 1, OK).is_none());
    let settled = s.on_outcome(due, send.no, failed()).unwrap();
    assert_eq!(settled.state, EVENT_FAILED);
    assert!(s.is_empty());
    assert_eq!(s.call_count(), 0);
    assert_eq!(s.in_flight(), 0);
}

/// Random pushes, outcomes and time steps: a call's event is never sent while an earlier one
/// of the same call is held, at most `max_in_flight` are on the wire, every event ends
/// settled exactly once, and nothing is left behind.
#[test]
fn random_runs_keep_order_bounds_and_leave_nothing() {
    for seed in 0..50u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = ScheduleConfig {
            max_attempts: 4,
            max_pending: 40,
            max_in_flight: 5,
            max_in_flight_per_target: 3,
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(80),
            },
        };
        let mut s = Schedule::new(config, seed);
        let mut now = Instant::now();
        let mut next_seq: HashMap<String, u32> = HashMap::new();
        // Per call: seqs held (not yet settled).
        let mut held: HashMap<String, std::collections::BTreeSet<u32>> = HashMap::new();
        let mut wire: Vec<(u64, String, u32)> = Vec::new();
        let mut settled_ids = std::collections::HashSet::new();
        let mut pushed = 0;
        let settle = |held: &mut HashMap<String, std::collections::BTreeSet<u32>>,
                      ids: &mut std::collections::HashSet<String>,
                      st: &Settled| {
            let (_, call, seq) =
                st.event_id
                    .split('_')
                    .fold((0, String::new(), 0u32), |(i, c, q), part| match i {
                        1 => (2, part.to_owned(), q),
                        2 => (3, c, part.parse().unwrap()),
                        _ => (i + 1, c, q),
                    });
            assert!(held.get_mut(&call).unwrap().remove(&seq));
            assert!(ids.insert(st.event_id.clone()), "settled twice");
        };
        for _ in 0..2000 {
            match rng.gen_range(0..10) {
                0..=3 if pushed < 600 => {
                    let call = format!("c{}", rng.gen_range(0..8));
                    let seq = next_seq.entry(call.clone()).or_insert(0);
                    *seq += 1;
                    held.entry(call.clone()).or_default().insert(*seq);
                    pushed += 1;
                    let mut e = event(&call, *seq);
                    // Calls c0..c3 go to one target, c4..c7 to another.
                    if call.as_str() >= "c4" {
                        e.target = "http://127.0.0.1:10/other".into();
                    }
                    let body = Bytes::from(e.body.clone());
                    for st in s.push(now, e, body, now) {
                        assert_eq!(st.state, EVENT_DROPPED);
                        settle(&mut held, &mut settled_ids, &st);
                    }
                }
                4..=6 if !wire.is_empty() => {
                    let (no, _, _) = wire.swap_remove(rng.gen_range(0..wire.len()));
                    let outcome = if rng.gen_bool(0.6) { OK } else { failed() };
                    let st = s.on_outcome(now, no, outcome).unwrap();
                    if st.state != EVENT_PENDING {
                        settle(&mut held, &mut settled_ids, &st);
                    }
                }
                _ => now += Duration::from_millis(rng.gen_range(0..30)),
            }
            while let Some(send) = s.poll_send(now) {
                let seq: u32 = send.event_id.rsplit('_').next().unwrap().parse().unwrap();
                let first_held = *held[&send.callid].iter().next().unwrap();
                assert_eq!(seq, first_held, "seed {seed}: sent out of order");
                assert!(!wire.iter().any(|(_, c, _)| *c == send.callid));
                wire.push((send.no, send.callid, seq));
            }
            assert!(wire.len() <= 5);
            for group in [["c0", "c1", "c2", "c3"], ["c4", "c5", "c6", "c7"]] {
                let to_target = wire.iter().filter(|(_, c, _)| group.contains(&c.as_str()));
                assert!(
                    to_target.count() <= 3,
                    "seed {seed}: a target over its limit"
                );
            }
            assert_eq!(s.in_flight(), wire.len());
            assert!(s.len() <= 40);
        }
        // Drain: everything delivered or given up.
        for _ in 0..10_000 {
            if s.is_empty() {
                break;
            }
            for (no, _, _) in std::mem::take(&mut wire) {
                let st = s.on_outcome(now, no, OK).unwrap();
                settle(&mut held, &mut settled_ids, &st);
            }
            now += Duration::from_millis(100);
            while let Some(send) = s.poll_send(now) {
                wire.push((send.no, send.callid, 0));
            }
        }
        assert!(s.is_empty(), "seed {seed}");
        assert_eq!(s.call_count(), 0);
        assert_eq!(s.target_count(), 0);
        assert!(held.values().all(|h| h.is_empty()));
        assert_eq!(settled_ids.len(), pushed);
    }
}
