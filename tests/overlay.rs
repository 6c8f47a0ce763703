//! The overlay of changed persons over a snapshot, without a database: a
//! changed person's records replace theirs in the snapshot entirely (old
//! keys and cards stop answering, new ones answer), multiple hits span
//! both, an unreadable person is answered UNAVAILABLE, and a snapshot
//! that covers a change retires it.

mod util;

use qualcache::model::{CardKey, CardStatus, Date, InsuranceKey, Status};
use qualcache::overlay::{Changes, Looked, Overlay, PersonChange};
use qualcache::protocol::{self, pb, Context};
use qualcache::snapshot::{Answer, Snapshot};
use util::*;

const AS_OF: &str = "20261101";
const TWINS: &str = "20150505";

fn base(dir: &std::path::Path) -> Snapshot {
    use CardStatus::*;
    snapshot(
        dir,
        vec![
            // 1: will move to another key and have the card restricted.
            rec(
                1,
                card("A1", Registered),
                qual("100", Some(0), "19800101", "20100401"),
            ),
            // 2 and 3: twins under one key; 2 will change, 3 is deleted.
            rec(
                2,
                card("B2", Registered),
                qual("200", Some(1), TWINS, "20150505"),
            ),
            rec(3, None, qual("200", Some(2), TWINS, "20150505")),
            // 4: untouched.
            rec(
                4,
                card("D4", Registered),
                qual("400", Some(0), "19700101", "20000401"),
            ),
            // 5: its change cannot be read.
            rec(
                5,
                card("E5", Registered),
                qual("500", Some(0), "19750101", "20000401"),
            ),
        ],
    )
}

fn change(
    person_id: u64,
    version: u64,
    records: Vec<qualcache::model::EnrolleeRecord>,
) -> PersonChange {
    PersonChange {
        person_id,
        version,
        records: Ok(records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (1000 * person_id + i as u64, r))
            .collect()),
    }
}

/// A change of `person_id` whose row (store row `line`) fails the checks.
fn unreadable(person_id: u64, version: u64, line: u64) -> PersonChange {
    PersonChange {
        person_id,
        version,
        records: Err(qualcache::model::row::RowError {
            line,
            column: Some("name"),
            reason: "parts must be separated by exactly one U+3000".into(),
            unit: qualcache::model::row::RowUnit::Qualification,
        }),
    }
}

fn overlay(base: Option<&Snapshot>) -> (Changes, Overlay) {
    use CardStatus::*;
    let mut changes = Changes::new(10);
    changes.apply(
        [
            change(
                1,
                11,
                vec![rec(
                    1,
                    card("A1", Restricted),
                    qual("900", Some(0), "19800101", "20100401"),
                )],
            ),
            change(
                2,
                12,
                vec![rec(
                    2,
                    card("B2", Registered),
                    lost(qual("200", Some(1), TWINS, "20150505"), "20261001"),
                )],
            ),
            change(3, 12, vec![]),
            change(
                9,
                13,
                vec![rec(
                    9,
                    card("C3", Registered),
                    qual("990", Some(0), "19900101", "20200401"),
                )],
            ),
            unreadable(5, 13, 77),
        ],
        13,
    );
    let o = changes.overlay(CardKey::demo().id(), base).unwrap();
    (changes, o)
}

fn key(number: &str, branch: Option<u8>) -> InsuranceKey {
    let branch = branch.map(|b| format!("{b:02}"));
    InsuranceKey::parse("01130012", Some("1234"), number, branch.as_deref()).unwrap()
}

fn answer<'a>(l: Looked<'a>) -> Answer<'a> {
    match l {
        Looked::Answer(a) => a,
        Looked::Unreadable => panic!("answered unreadable"),
    }
}

#[test]
fn a_changed_persons_records_replace_theirs_in_the_snapshot() {
    let dir = tempdir();
    let snap = base(dir.path());
    // Made for this snapshot (person indexes), and for none (store ids:
    // what lookups use over a snapshot swapped in after the overlay).
    let (_, by_index) = overlay(Some(&snap));
    let (_, by_id) = overlay(None);
    for o in [by_index, by_id] {
        replaced_persons_answer_as_they_are_now(&snap, &o);
    }
}

fn replaced_persons_answer_as_they_are_now(snap: &Snapshot, o: &Overlay) {
    let as_of: Date = date(AS_OF);
    assert_eq!(
        (o.persons(), o.records(), o.unreadable(), o.position()),
        (5, 3, 1, 13)
    );

    let by_key = |n: &str, b: Option<u8>, birth: &str| {
        answer(o.lookup_insurance(snap, &key(n, b), date(birth), as_of))
    };
    let by_card = |s: &str| answer(o.lookup_card(snap, &digest(s), as_of));

    // Person 1 moved to key 900 and had the card restricted.
    assert_eq!(
        by_key("100", Some(0), "19800101").status(),
        Status::NotFound
    );
    let moved = by_key("900", Some(0), "19800101");
    assert_eq!(moved.status(), Status::Valid);
    assert_eq!(moved.persons().collect::<Vec<_>>(), [1]);
    assert_eq!(by_card("A1").status(), Status::CardRestricted);

    // Person 2 lost the qualification; person 3 is gone.
    assert_eq!(by_key("200", Some(1), TWINS).status(), Status::Lost);
    assert_eq!(by_key("200", Some(2), TWINS).status(), Status::NotFound);
    let twins = by_key("200", None, TWINS);
    assert_eq!(
        twins.status(),
        Status::Lost,
        "only the changed twin is left"
    );
    assert_eq!(twins.persons().collect::<Vec<_>>(), [2]);

    // A new person answers by key and card; the untouched one as before.
    assert_eq!(by_key("990", Some(0), "19900101").status(), Status::Valid);
    assert_eq!(by_card("C3").status(), Status::Valid);
    assert_eq!(by_key("400", Some(0), "19700101").status(), Status::Valid);
    assert_eq!(by_card("D4").status(), Status::Valid);
    assert_eq!(by_card("FF").status(), Status::CardNotRegistered);

    // The unreadable person, by key and by card.
    assert!(matches!(
        o.lookup_insurance(snap, &key("500", Some(0)), date("19750101"), as_of),
        Looked::Unreadable
    ));
    assert!(matches!(
        o.lookup_card(snap, &digest("E5"), as_of),
        Looked::Unreadable
    ));
}

#[test]
fn a_multiple_hit_spans_the_snapshot_and_the_overlay() {
    use CardStatus::*;
    let dir = tempdir();
    let snap = base(dir.path());
    // Only twin 2 changes (a new card); twin 3 stays in the snapshot.
    let mut changes = Changes::new(10);
    changes.apply(
        [change(
            2,
            11,
            vec![rec(
                2,
                card("B3", Registered),
                qual("200", Some(1), TWINS, "20150505"),
            )],
        )],
        11,
    );
    let o = changes.overlay(CardKey::demo().id(), Some(&snap)).unwrap();
    let as_of = date(AS_OF);
    let a = answer(o.lookup_insurance(&snap, &key("200", None), date(TWINS), as_of));
    assert_eq!(a.status(), Status::MultipleHits);
    let mut persons: Vec<u64> = a.persons().collect();
    persons.sort_unstable();
    assert_eq!(persons, [2, 3]);
    let wire = protocol::answer(&a, &snap);
    assert_eq!(wire.matches.len(), 2);
    // With the branch, each twin alone; the old card no longer answers.
    let one = answer(o.lookup_insurance(&snap, &key("200", Some(1)), date(TWINS), as_of));
    assert_eq!(one.persons().collect::<Vec<_>>(), [2]);
    assert_eq!(
        answer(o.lookup_card(&snap, &digest("B2"), as_of)).status(),
        Status::CardNotRegistered
    );
    assert_eq!(
        answer(o.lookup_card(&snap, &digest("B3"), as_of)).status(),
        Status::Valid
    );
}

#[test]
fn with_a_branch_the_qualification_holding_wins_across_both() {
    use CardStatus::*;
    let dir = tempdir();
    // Person 4's number was given again to person 7 after 4 lost it.
    let snap = snapshot(
        dir.path(),
        vec![rec(
            4,
            None,
            lost(qual("700", Some(0), "19700101", "20000401"), "20200101"),
        )],
    );
    let mut changes = Changes::new(1);
    changes.apply(
        [change(
            7,
            2,
            vec![rec(
                7,
                card("77", Registered),
                qual("700", Some(0), "19700101", "20200401"),
            )],
        )],
        2,
    );
    let o = changes.overlay(CardKey::demo().id(), Some(&snap)).unwrap();
    let a = answer(o.lookup_insurance(&snap, &key("700", Some(0)), date("19700101"), date(AS_OF)));
    assert_eq!(a.status(), Status::Valid);
    assert_eq!(a.persons().collect::<Vec<_>>(), [7]);
    // Before person 7 acquired it, the snapshot's lost one answers.
    let a = answer(o.lookup_insurance(
        &snap,
        &key("700", Some(0)),
        date("19700101"),
        date("20200201"),
    ));
    assert_eq!(a.status(), Status::Lost);
    assert_eq!(a.persons().collect::<Vec<_>>(), [4]);
}

#[test]
fn an_unreadable_person_is_answered_unavailable_on_the_wire() {
    let dir = tempdir();
    let snap = base(dir.path());
    let (_, o) = overlay(Some(&snap));
    let metrics = qualcache::metrics::Metrics::new();
    let ctx = Context {
        snapshot: Some(&snap),
        overlay: Some(&o),
        card_key: &CardKey::demo(),
        today: date(AS_OF),
        limits: Default::default(),
        uptime_seconds: 0,
        now_unix: 0,
        connections: 0,
        metrics: &metrics,
    };
    let card = |serial: &str| pb::Request {
        as_of: 0,
        kind: Some(pb::request::Kind::Card(pb::CardLookup {
            serial: serial.into(),
        })),
    };
    let r = protocol::handle(&ctx, card("E5"));
    assert_eq!(r.status, pb::Status::Unavailable as i32);
    assert!(r.answer.is_none());
    assert!(
        r.reason.contains("latest change could not be read"),
        "{}",
        r.reason
    );
    let r = protocol::handle(&ctx, card("A1"));
    assert_eq!(r.answer.unwrap().status, pb::Status::CardRestricted as i32);
    let status = protocol::handle(
        &ctx,
        pb::Request {
            as_of: 0,
            kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
        },
    )
    .server
    .unwrap();
    assert_eq!((status.change_position, status.overlay_persons), (13, 5));
}

#[test]
fn a_snapshot_retires_the_changes_it_covers() {
    let (mut changes, _) = overlay(None);
    assert_eq!(changes.len(), 5);
    // A snapshot at position 12 covers persons 1 (11), 2 and 3 (12).
    assert_eq!(changes.retire(12), 3);
    let o = changes.overlay(CardKey::demo().id(), None).unwrap();
    assert_eq!((o.persons(), o.unreadable()), (2, 1));
    assert_eq!(changes.retire(13), 2);
    assert!(changes.is_empty());
    // A later change of an unreadable person that reads cleanly clears it.
    let (mut changes, _) = overlay(None);
    changes.apply(
        [change(
            5,
            14,
            vec![rec(5, None, qual("500", Some(0), "19750101", "20000401"))],
        )],
        14,
    );
    let o = changes.overlay(CardKey::demo().id(), None).unwrap();
    assert_eq!((o.unreadable(), o.position()), (0, 14));
}

#[test]
fn a_changed_person_whose_rows_a_build_refuses_is_unreadable_not_dropped() {
    let dir = tempdir();
    let snap = base(dir.path());
    // Two changed persons now claim one key in overlapping periods. The
    // overlay's build refuses the later row (as a snapshot build would,
    // naming it), and that row's person is answered UNAVAILABLE, not
    // left out silently (which would let the snapshot's old answer
    // through); the other keeps its answer.
    let mut changes = Changes::new(1);
    changes.apply(
        [
            change(
                1,
                2,
                vec![rec(1, None, qual("800", Some(0), "19800101", "20100401"))],
            ),
            change(
                4,
                2,
                vec![rec(4, None, qual("800", Some(0), "19800101", "20120401"))],
            ),
        ],
        2,
    );
    let o = changes.overlay(CardKey::demo().id(), None).unwrap();
    assert_eq!((o.persons(), o.unreadable()), (2, 1));
    let as_of = date(AS_OF);
    assert!(matches!(
        o.lookup_insurance(&snap, &key("400", Some(0)), date("19700101"), as_of),
        Looked::Unreadable
    ));
    let kept = answer(o.lookup_insurance(&snap, &key("800", Some(0)), date("19800101"), as_of));
    assert_eq!(
        (kept.status(), kept.persons().collect::<Vec<_>>()),
        (Status::Valid, vec![1])
    );
}

/// Changes in batches, the overlay made after each (as the follower
/// does): with layers (the later batches in the newer layer over the
/// first) and with one layer (folded at every overlay).
fn batches(
    made_for: Option<&Snapshot>,
    fold_min: usize,
    batches: Vec<Vec<PersonChange>>,
) -> Overlay {
    let mut changes = Changes::new(10).folding_at(fold_min);
    let mut o = None;
    for (i, batch) in batches.into_iter().enumerate() {
        changes.apply(batch, 11 + i as u64);
        o = Some(changes.overlay(CardKey::demo().id(), made_for).unwrap());
    }
    o.unwrap()
}

/// Every lookup of the layered scenario: (what, status, persons).
/// (`None`: UNAVAILABLE, the person's latest change unreadable.)
fn probes(snap: &Snapshot, o: &Overlay) -> Vec<(String, Option<Status>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut note = |what: String, l: Looked<'_>| {
        let (status, mut persons) = match l {
            Looked::Answer(a) => (Some(a.status()), a.persons().collect::<Vec<_>>()),
            Looked::Unreadable => (None, vec![]),
        };
        persons.sort_unstable();
        out.push((what, status, persons));
    };
    for as_of in ["20261101", "20200201", "20090101"] {
        let as_of = date(as_of);
        for (n, birth) in [
            ("100", "19800101"),
            ("200", TWINS),
            ("400", "19700101"),
            ("500", "19750101"),
            ("800", "19800101"),
            ("900", "19800101"),
            ("990", "19900101"),
        ] {
            for b in [None, Some(0), Some(1), Some(2), Some(3)] {
                let l = o.lookup_insurance(snap, &key(n, b), date(birth), as_of);
                note(format!("{n} {b:?} {birth} on {as_of}"), l);
            }
        }
        for c in ["A1", "B2", "B3", "C3", "D4", "E5", "F6", "FF"] {
            note(
                format!("card {c} on {as_of}"),
                o.lookup_card(snap, &digest(c), as_of),
            );
        }
    }
    out
}

#[test]
fn two_layers_answer_as_one_overlay_of_the_same_changes() {
    use CardStatus::*;
    let dir = tempdir();
    let snap = base(dir.path());
    let scenario = || {
        vec![
            // Into the older layer: person 1 moves to key 800, person 4
            // changes nothing but its card, person 5 cannot be read, a
            // new person 9, twin 2 loses the qualification.
            vec![
                change(
                    1,
                    11,
                    vec![rec(
                        1,
                        card("A1", Registered),
                        qual("800", Some(0), "19800101", "20100401"),
                    )],
                ),
                change(
                    4,
                    11,
                    vec![rec(
                        4,
                        card("F6", Registered),
                        qual("400", Some(0), "19700101", "20000401"),
                    )],
                ),
                unreadable(5, 11, 77),
                change(
                    9,
                    11,
                    vec![rec(
                        9,
                        card("C3", Registered),
                        qual("990", Some(0), "19900101", "20200401"),
                    )],
                ),
                change(
                    2,
                    11,
                    vec![rec(
                        2,
                        card("B2", Registered),
                        lost(qual("200", Some(1), TWINS, "20150505"), "20261001"),
                    )],
                ),
            ],
            // Into the newer layer: person 1 moves again (key 900) and has
            // the card restricted, person 5 reads cleanly now, person 4
            // cannot be read, a third twin (8) joins key 200.
            vec![
                change(
                    1,
                    12,
                    vec![rec(
                        1,
                        card("A1", Restricted),
                        qual("900", Some(0), "19800101", "20100401"),
                    )],
                ),
                change(
                    5,
                    12,
                    vec![rec(
                        5,
                        card("E5", Registered),
                        qual("500", Some(0), "19750101", "20000401"),
                    )],
                ),
                unreadable(4, 12, 78),
            ],
            // Later: person 9's card is withdrawn and it gets B3, the third
            // twin arrives.
            vec![
                change(
                    9,
                    13,
                    vec![rec(
                        9,
                        card("B3", Registered),
                        qual("990", Some(0), "19900101", "20200401"),
                    )],
                ),
                change(
                    8,
                    13,
                    vec![rec(8, None, qual("200", Some(3), TWINS, "20150505"))],
                ),
            ],
        ]
    };
    let layered = batches(Some(&snap), 1000, scenario());
    let one = batches(Some(&snap), 0, scenario());
    assert_eq!(
        layered.newest_persons(),
        5,
        "persons 1, 4 and 5 (second batch), 9 and 8 (third)"
    );
    assert_eq!(one.newest_persons(), 0, "one layer");
    assert_eq!(
        (
            layered.persons(),
            layered.records(),
            layered.unreadable(),
            layered.position()
        ),
        (
            one.persons(),
            one.records(),
            one.unreadable(),
            one.position()
        )
    );
    assert_eq!((layered.persons(), layered.unreadable()), (6, 1));
    let (layered_answers, b) = (probes(&snap, &layered), probes(&snap, &one));
    assert_eq!(layered_answers.len(), b.len());
    for (x, y) in layered_answers.iter().zip(&b) {
        if x.0.starts_with("card F6") {
            // Person 4's card of its first change, which the one layer
            // has forgotten (not registered) and the two layers still
            // hold: the person's latest change is unreadable, so it is
            // answered UNAVAILABLE (below), the careful answer.
            assert_eq!((&x.1, &y.1), (&None, &Some(Status::CardNotRegistered)));
            continue;
        }
        assert_eq!(x, y, "layered against one layer");
    }

    // And what they are.
    let as_of = date(AS_OF);
    let status = |n: &str, b: Option<u8>, birth: &str| match layered.lookup_insurance(
        &snap,
        &key(n, b),
        date(birth),
        as_of,
    ) {
        Looked::Answer(a) => (Some(a.status()), a.persons().collect::<Vec<_>>()),
        Looked::Unreadable => (None, vec![]),
    };
    // Person 1's key of the older layer no longer answers.
    assert_eq!(status("800", Some(0), "19800101").0, Some(Status::NotFound));
    assert_eq!(
        status("900", Some(0), "19800101"),
        (Some(Status::Valid), vec![1])
    );
    assert_eq!(
        answer(layered.lookup_card(&snap, &digest("A1"), as_of)).status(),
        Status::CardRestricted
    );
    // Three persons under key 200 in three places: snapshot (3), older
    // layer (2), newer layer (8).
    let (s, mut persons) = status("200", None, TWINS);
    persons.sort_unstable();
    assert_eq!((s, persons), (Some(Status::MultipleHits), vec![2, 3, 8]));
    let a = answer(layered.lookup_insurance(&snap, &key("200", None), date(TWINS), as_of));
    assert_eq!(protocol::answer(&a, &snap).matches.len(), 3);
    // Unreadable now (readable in the older layer): by key and by both
    // cards it held; readable now (unreadable in the older layer).
    assert_eq!(status("400", Some(0), "19700101").0, None, "unavailable");
    assert!(matches!(
        layered.lookup_card(&snap, &digest("F6"), as_of),
        Looked::Unreadable
    ));
    assert!(matches!(
        layered.lookup_card(&snap, &digest("D4"), as_of),
        Looked::Unreadable
    ));
    assert_eq!(
        status("500", Some(0), "19750101"),
        (Some(Status::Valid), vec![5])
    );
    // Person 9's card of the older layer is withdrawn, the new one answers.
    assert_eq!(
        answer(layered.lookup_card(&snap, &digest("C3"), as_of)).status(),
        Status::CardNotRegistered
    );
    assert_eq!(
        answer(layered.lookup_card(&snap, &digest("B3"), as_of))
            .persons()
            .collect::<Vec<_>>(),
        [9]
    );
    // Made for no snapshot (store ids instead of bits, as over a
    // snapshot swapped in after it), the same answers.
    let by_id = batches(None, 1000, scenario());
    assert_eq!(by_id.newest_persons(), 5);
    assert_eq!(probes(&snap, &by_id), layered_answers);
}

#[test]
fn the_newer_layer_is_folded_once_it_outgrows_its_bound() {
    let dir = tempdir();
    let snap = base(dir.path());
    let mut changes = Changes::new(10).folding_at(3);
    let mut newest = Vec::new();
    for (i, person) in (100..110).enumerate() {
        let v = 11 + i as u64;
        changes.apply(
            [change(
                person,
                v,
                vec![rec(
                    person,
                    None,
                    qual(&person.to_string(), Some(0), "19900101", "20200401"),
                )],
            )],
            v,
        );
        let o = changes.overlay(CardKey::demo().id(), Some(&snap)).unwrap();
        newest.push(o.newest_persons());
        // Every person changed so far answers, wherever its layer.
        for p in 100..=person {
            let a = answer(o.lookup_insurance(
                &snap,
                &key(&p.to_string(), Some(0)),
                date("19900101"),
                date(AS_OF),
            ));
            assert_eq!(a.persons().collect::<Vec<_>>(), [p]);
        }
    }
    // The first makes the older layer; then up to 3 in the newer one,
    // the 4th folds them all.
    assert_eq!(newest, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
    // A snapshot swapped in (retire) makes it whole again.
    changes.retire(12);
    let o = changes.overlay(CardKey::demo().id(), Some(&snap)).unwrap();
    assert_eq!((o.persons(), o.newest_persons()), (8, 0));
}
