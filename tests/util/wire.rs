//! Probes over the wire: the request for a probe, and the check of its
//! answer.

use qualcache::model::Status;
use qualcache::probe::Probe;
use qualcache::protocol::pb;

/// The wire request of a probe.
pub fn request(p: &Probe) -> pb::Request {
    pb::Request {
        as_of: qualcache::protocol::day(p.as_of),
        kind: Some(qualcache::protocol::request_kind(&p.lookup)),
    }
}

/// The probes' key identity of a wire qualification: the insurer number
/// as stored (answers pad a 6-digit one with two leading spaces).
pub fn key_of(q: &pb::Qualification) -> String {
    assert_eq!(q.insurer_number.len(), 8, "{:?}", q.insurer_number);
    format!(
        "{}:{}:{}:{}",
        q.insurer_number.trim_start(),
        q.symbol,
        q.number,
        q.branch
    )
}

/// Checks one answer against its probe.
pub fn check(p: &Probe, a: &pb::Answer, what: &str) {
    assert_eq!(
        a.status,
        p.expect.code() as i32,
        "{what}: probe {} ({:?})",
        p.case,
        a.reason
    );
    if let Some(k) = &p.expect_key {
        assert_eq!(
            &key_of(a.qualification.as_ref().unwrap()),
            k,
            "{what}: {}",
            p.case
        );
    }
    if let Some(k) = &p.expect_newer_key {
        assert_eq!(&key_of(a.newer.as_ref().unwrap()), k, "{what}: {}", p.case);
    }
    if let Some(n) = p.expect_matches {
        assert_eq!(a.matches.len(), n, "{what}: {}", p.case);
    }
    if p.expect == Status::CardRestricted {
        assert!(
            a.qualification.is_none(),
            "restricted card must not carry a qualification"
        );
    }
}
