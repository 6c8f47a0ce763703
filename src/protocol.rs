//! The wire protocol, `qualcache/1`: message types generated from
//! `proto/qualcache.proto`, and the pure request handler the daemon runs on
//! each decoded request. Nothing here does I/O: the QUIC driver
//! (`server`) reads bytes, calls [`handle`], and writes bytes back.
//! PROTOCOL.md documents framing, fields and limits for other clients.

use prost::Message;

use crate::audit::{Ids, Lookup};
use crate::metrics::{Metrics, RequestKind};
use crate::model::{CardKey, CardSerial, Date, InsuranceKey, Qualification, Status};
use crate::overlay::{Looked, Overlay};
use crate::probe::{LookupError, ProbeLookup};
use crate::snapshot::{Answer, Snapshot};

/// Generated protocol messages (`qualcache.v1`).
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/qualcache.v1.rs"));
}

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"qualcache/1";

/// Limits a server enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded request, bytes.
    pub max_request_bytes: usize,
    /// Most items in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request_bytes: 256 * 1024,
            max_batch: 1_000,
        }
    }
}

/// What [`handle`] needs besides the request.
#[derive(Debug)]
pub struct Context<'a> {
    /// The snapshot answering, if one is loaded.
    pub snapshot: Option<&'a Snapshot>,
    /// The persons changed since the snapshot was built, answered as they
    /// are now (a database source's change feed); `None` without one.
    pub overlay: Option<&'a Overlay>,
    /// Key for card serial digests.
    pub card_key: &'a CardKey,
    /// Today in Japan time (used when `as_of` is 0).
    pub today: Date,
    /// Request limits.
    pub limits: Limits,
    /// Filled into status responses.
    pub uptime_seconds: u64,
    /// Now, Unix seconds (the snapshot's age in status responses).
    pub now_unix: u64,
    /// Filled into status responses.
    pub connections: u64,
    /// Filled into status responses.
    pub metrics: &'a Metrics,
}

/// Decodes a request; `None` if the bytes are not a `Request` message.
pub fn decode_request(bytes: &[u8]) -> Option<pb::Request> {
    pb::Request::decode(bytes).ok()
}

/// A response for a request that could not be read (too large, not
/// protobuf); `reason` must carry no personal data.
pub fn invalid(reason: impl Into<String>) -> pb::Response {
    pb::Response {
        status: pb::Status::InvalidRequest as i32,
        reason: reason.into(),
        ..pb::Response::default()
    }
}

/// Answers one encoded request: decodes it, then [`handle`]. Bytes that
/// are not a `Request` are answered `INVALID_REQUEST`. Also says what kind
/// of request it was, for the metrics.
///
/// With `lookups`, each lookup answered (batch items too) is also pushed
/// there, with the persons it answered, for the audit trail.
pub fn handle_bytes(
    ctx: &Context<'_>,
    bytes: &[u8],
    lookups: Option<&mut Vec<Lookup>>,
) -> (RequestKind, pb::Response) {
    match decode_request(bytes) {
        Some(req) => (kind_of(&req), handle_audited(ctx, req, lookups)),
        None => (
            RequestKind::Malformed,
            invalid("not a qualcache request (protobuf decoding failed)"),
        ),
    }
}

/// What a decoded request asks for.
pub fn kind_of(req: &pb::Request) -> RequestKind {
    use pb::request::Kind;
    match req.kind {
        Some(Kind::Card(_)) => RequestKind::Card,
        Some(Kind::Insurance(_)) => RequestKind::Insurance,
        Some(Kind::Batch(_)) => RequestKind::Batch,
        Some(Kind::Status(_)) => RequestKind::Status,
        None => RequestKind::Malformed,
    }
}

/// Answers one decoded request. Pure: the same inputs give the same output.
pub fn handle(ctx: &Context<'_>, req: pb::Request) -> pb::Response {
    handle_audited(ctx, req, None)
}

/// [`handle`], also pushing each lookup answered into `lookups` (see
/// [`handle_bytes`]).
pub fn handle_audited(
    ctx: &Context<'_>,
    req: pb::Request,
    mut lookups: Option<&mut Vec<Lookup>>,
) -> pb::Response {
    use pb::request::Kind;
    let Some(kind) = req.kind else {
        return invalid("request has no lookup (card, insurance, batch or status)");
    };
    let as_of = match as_of(req.as_of, ctx.today) {
        Ok(d) => d,
        Err(reason) => return invalid(reason),
    };
    let Some(snapshot) = ctx.snapshot else {
        return pb::Response {
            status: pb::Status::Unavailable as i32,
            reason: "no snapshot loaded".into(),
            ..pb::Response::default()
        };
    };
    let generation = snapshot.header().generation;
    let mut resp = pb::Response {
        generation,
        ..pb::Response::default()
    };
    let collect = lookups.is_some();
    let mut note = |path, batch, (answer, (whom, rows)): (pb::Answer, (Ids, Ids))| {
        if let Some(l) = lookups.as_deref_mut() {
            l.push(Lookup {
                path,
                batch,
                status: answer.status,
                generation,
                whom,
                rows,
            });
        }
        answer
    };
    match kind {
        Kind::Card(c) => {
            let a = note("card", false, card(ctx, snapshot, &c, as_of, collect));
            single(&mut resp, a);
        }
        Kind::Insurance(i) => {
            let a = note(
                "insurance",
                false,
                insurance(ctx, snapshot, &i, as_of, collect),
            );
            single(&mut resp, a);
        }
        Kind::Batch(b) => {
            if b.items.len() > ctx.limits.max_batch {
                return invalid(format!(
                    "batch of {} items; the limit is {}",
                    b.items.len(),
                    ctx.limits.max_batch
                ));
            }
            resp.status = pb::Status::Ok as i32;
            resp.answers = b
                .items
                .iter()
                .map(|item| match &item.kind {
                    Some(pb::batch_item::Kind::Card(c)) => {
                        note("card", true, card(ctx, snapshot, c, as_of, collect))
                    }
                    Some(pb::batch_item::Kind::Insurance(i)) => note(
                        "insurance",
                        true,
                        insurance(ctx, snapshot, i, as_of, collect),
                    ),
                    None => note(
                        "none",
                        true,
                        (
                            invalid_answer("batch item has no lookup".into()),
                            (Ids::Nobody, Ids::Nobody),
                        ),
                    ),
                })
                .collect();
        }
        Kind::Status(_) => {
            let h = snapshot.header();
            resp.status = pb::Status::Ok as i32;
            resp.server = Some(pb::ServerStatus {
                generation,
                records: h.records,
                snapshot_created_at_unix: h.created_at_unix,
                snapshot_created_at: crate::model::date::iso_jst(h.created_at_unix),
                snapshot_age_seconds: ctx.now_unix.saturating_sub(h.created_at_unix),
                uptime_seconds: ctx.uptime_seconds,
                connections: ctx.connections,
                version: env!("CARGO_PKG_VERSION").into(),
                source_version: h.source_version,
                builds: ctx
                    .metrics
                    .builds
                    .load(std::sync::atomic::Ordering::Relaxed),
                build_failures: ctx
                    .metrics
                    .build_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
                reload_failures: ctx
                    .metrics
                    .reload_failures
                    .load(std::sync::atomic::Ordering::Relaxed),
                change_position: ctx.overlay.map_or(0, |o| o.position()),
                overlay_persons: ctx.overlay.map_or(0, |o| o.persons() as u64),
            });
        }
    }
    resp
}

/// Fills a single lookup's response: its status is the answer's; a
/// lookup status (1-8) comes with the answer in `answer`, any other
/// (`INVALID_REQUEST`, `UNAVAILABLE`) with its reason in `Response.reason`
/// and no `answer`, like every refusal of a whole request.
fn single(resp: &mut pb::Response, a: pb::Answer) {
    resp.status = a.status;
    if is_lookup_status(a.status) {
        resp.answer = Some(a);
    } else {
        resp.reason = a.reason;
    }
}

/// Whether a wire status is a lookup's answer (1-8) rather than a
/// protocol status.
pub fn is_lookup_status(status: i32) -> bool {
    (pb::Status::Valid as i32..=pb::Status::CardRestricted as i32).contains(&status)
}

/// The as-of day of a request: 0 for today, else YYYYMMDD.
fn as_of(raw: u32, today: Date) -> Result<Date, String> {
    if raw == 0 {
        return Ok(today);
    }
    date(raw).map_err(|e| format!("as_of: {e}"))
}

fn date(raw: u32) -> Result<Date, crate::model::date::DateError> {
    if !(10_000_000..=99_991_231).contains(&raw) {
        return Err(crate::model::date::DateError::Format);
    }
    Date::from_ymd((raw / 10_000) as i32, raw / 100 % 100, raw % 100)
        .ok_or(crate::model::date::DateError::NoSuchDay)
}

/// A card lookup's answer and, when `whom` is asked for, the persons it
/// answered (reading their store ids costs a memory access, so only the
/// audit trail asks).
fn card(
    ctx: &Context<'_>,
    snapshot: &Snapshot,
    c: &pb::CardLookup,
    as_of: Date,
    whom: bool,
) -> (pb::Answer, (Ids, Ids)) {
    let serial: CardSerial = match c.serial.parse() {
        Ok(s) => s,
        Err(e) => return refused(LookupError::Serial(e).to_string()),
    };
    let digest = ctx.card_key.digest(&serial);
    match ctx.overlay {
        Some(o) if !o.is_empty() => looked(o.lookup_card(snapshot, &digest, as_of), snapshot, whom),
        _ => answered(&snapshot.lookup_card(&digest, as_of), snapshot, whom),
    }
}

/// An insurance lookup's answer, as [`card`].
fn insurance(
    ctx: &Context<'_>,
    snapshot: &Snapshot,
    i: &pb::InsuranceLookup,
    as_of: Date,
    whom: bool,
) -> (pb::Answer, (Ids, Ids)) {
    let key = match InsuranceKey::parse(&i.insurer, Some(&i.symbol), &i.number, Some(&i.branch)) {
        Ok(k) => k,
        Err(e) => return refused(LookupError::Key(e).to_string()),
    };
    if i.birth == 0 {
        return refused("insurance: birth date is required".into());
    }
    let birth = match date(i.birth) {
        Ok(d) => d,
        Err(e) => return refused(format!("insurance: birth: {e}")),
    };
    match ctx.overlay {
        Some(o) if !o.is_empty() => looked(
            o.lookup_insurance(snapshot, &key, birth, as_of),
            snapshot,
            whom,
        ),
        _ => answered(
            &snapshot.lookup_insurance(&key, birth, as_of),
            snapshot,
            whom,
        ),
    }
}

/// The wire answer of a lookup through the overlay: a person whose latest
/// change could not be read is answered UNAVAILABLE (nothing of theirs is
/// in the answer, so the audit trail records nobody).
fn looked(l: Looked<'_>, snapshot: &Snapshot, whom: bool) -> (pb::Answer, (Ids, Ids)) {
    match l {
        Looked::Answer(a) => answered(&a, snapshot, whom),
        Looked::Unreadable => (
            pb::Answer {
                status: pb::Status::Unavailable as i32,
                reason: "this person's latest change could not be read; retry later".into(),
                ..pb::Answer::default()
            },
            (Ids::Nobody, Ids::Nobody),
        ),
    }
}

fn answered(a: &Answer<'_>, snapshot: &Snapshot, whom: bool) -> (pb::Answer, (Ids, Ids)) {
    let ids = if whom {
        (Ids::of(a.persons()), Ids::of(a.rows()))
    } else {
        (Ids::Nobody, Ids::Nobody)
    };
    (answer(a, snapshot), ids)
}

fn refused(reason: String) -> (pb::Answer, (Ids, Ids)) {
    (invalid_answer(reason), (Ids::Nobody, Ids::Nobody))
}

fn invalid_answer(reason: String) -> pb::Answer {
    pb::Answer {
        status: pb::Status::InvalidRequest as i32,
        reason,
        ..pb::Answer::default()
    }
}

/// The wire form of a lookup answer.
pub fn answer(a: &Answer<'_>, snapshot: &Snapshot) -> pb::Answer {
    let decode = |v: &crate::snapshot::QualView<'_>| v.to_qualification().map(qualification);
    let mut out = pb::Answer {
        status: status(a.status()) as i32,
        ..pb::Answer::default()
    };
    let result = match a {
        Answer::Found {
            qualification: q,
            newer,
            ..
        } => decode(q).and_then(|q| {
            out.qualification = Some(q);
            out.newer = newer.as_ref().map(decode).transpose()?;
            Ok(())
        }),
        Answer::Multiple(m) => m
            .iter()
            .map(|v| decode(&v))
            .collect::<Result<_, _>>()
            .map(|v| {
                out.matches = v;
            }),
        _ => Ok(()),
    };
    match result {
        Ok(()) => out,
        // A verified snapshot always decodes; say so rather than guess.
        Err(e) => {
            tracing::error!(generation = snapshot.header().generation, error = %e, "corrupt record");
            pb::Answer {
                status: pb::Status::Unavailable as i32,
                reason: "snapshot record does not decode".into(),
                ..pb::Answer::default()
            }
        }
    }
}

/// The wire form of a lookup.
pub fn request_kind(lookup: &ProbeLookup) -> pb::request::Kind {
    match batch_item(lookup).kind {
        Some(pb::batch_item::Kind::Card(c)) => pb::request::Kind::Card(c),
        Some(pb::batch_item::Kind::Insurance(i)) => pb::request::Kind::Insurance(i),
        None => pb::request::Kind::Status(pb::StatusRequest {}),
    }
}

/// The wire form of a lookup as a batch item.
pub fn batch_item(lookup: &ProbeLookup) -> pb::BatchItem {
    let kind = match lookup {
        ProbeLookup::Card { serial } => pb::batch_item::Kind::Card(pb::CardLookup {
            serial: serial.clone(),
        }),
        ProbeLookup::Insurance {
            insurer,
            symbol,
            number,
            branch,
            birth,
        } => pb::batch_item::Kind::Insurance(pb::InsuranceLookup {
            insurer: insurer.clone(),
            symbol: symbol.clone().unwrap_or_default(),
            number: number.clone(),
            branch: branch.clone().unwrap_or_default(),
            birth: day(*birth),
        }),
    };
    pb::BatchItem { kind: Some(kind) }
}

/// The wire status of a domain status.
pub fn status(s: Status) -> pb::Status {
    match s {
        Status::Valid => pb::Status::Valid,
        Status::Lost => pb::Status::Lost,
        Status::LostWithNewer => pb::Status::LostWithNewer,
        Status::NotFound => pb::Status::NotFound,
        Status::MultipleHits => pb::Status::MultipleHits,
        Status::ValidUnregistered => pb::Status::ValidUnregistered,
        Status::CardNotRegistered => pb::Status::CardNotRegistered,
        Status::CardRestricted => pb::Status::CardRestricted,
    }
}

/// A date as the wire's `YYYYMMDD` number.
pub fn day(d: Date) -> u32 {
    let (y, m, dd) = d.ymd();
    y as u32 * 10_000 + m * 100 + dd
}

/// The wire form of a qualification.
pub fn qualification(q: Qualification) -> pb::Qualification {
    pb::Qualification {
        insurer_number: q.insurer_number.answer_form(),
        insurer_name: q.insurer_name,
        card_class: q.card_class.code().into(),
        symbol: q.symbol.map(|s| s.to_string()).unwrap_or_default(),
        number: q.number.to_string(),
        branch: q.branch.map(|b| b.to_string()).unwrap_or_default(),
        relation: u32::from(q.relation.to_byte()),
        name: q.name,
        name_kana: q.name_kana,
        sex: u32::from(q.sex.to_byte()),
        birth_date: day(q.birth_date),
        acquired_date: day(q.acquired_date),
        lost_date: q.loss.map_or(0, |l| day(l.date)),
        loss_reason: q.loss.map(|l| l.reason.code().into()).unwrap_or_default(),
        certificate: q.certificate.map(|c| pb::Certificate {
            issued: day(c.issued),
            valid_from: day(c.valid_from),
            valid_until: day(c.valid_until),
        }),
        copay_percent: q.copay_percent.code().parse().unwrap_or(0),
        preschool: q.preschool,
        elderly: q.elderly.map(|e| pb::Elderly {
            valid_from: day(e.valid_from),
            valid_until: day(e.valid_until),
            percent: e.percent.code().parse().unwrap_or(0),
        }),
        limit_category: q
            .limit_category
            .map(|l| l.code().into())
            .unwrap_or_default(),
        specific_disease: q.specific_disease.map(|d| pb::SpecificDisease {
            kind: u32::from(d.kind.to_byte()),
            monthly_cap_yen: d.monthly_cap_yen,
        }),
        public_expense: q.public_expense.map(|p| pb::PublicExpense {
            payer: p.payer.to_string(),
            recipient: p.recipient.to_string(),
            welfare_office: p.welfare_office,
            registered: p.registered,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(today: &str) -> Context<'static> {
        static KEY: std::sync::OnceLock<CardKey> = std::sync::OnceLock::new();
        static METRICS: Metrics = Metrics::new();
        Context {
            snapshot: None,
            overlay: None,
            card_key: KEY.get_or_init(CardKey::demo),
            today: today.parse().unwrap(),
            limits: Limits::default(),
            uptime_seconds: 0,
            now_unix: 0,
            connections: 0,
            metrics: &METRICS,
        }
    }

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let req = pb::Request {
            as_of: 20261101,
            kind: Some(pb::request::Kind::Card(pb::CardLookup {
                serial: "ABC".into(),
            })),
        };
        let bytes = req.encode_to_vec();
        assert_eq!(decode_request(&bytes), Some(req));
        assert_eq!(decode_request(&[0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn two_kinds_decode_to_the_last() {
        let card = pb::Request {
            as_of: 20261101,
            kind: Some(pb::request::Kind::Card(pb::CardLookup {
                serial: "ABC".into(),
            })),
        };
        let status = pb::Request {
            as_of: 0,
            kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
        };
        // Both kinds on the wire, status last: protobuf keeps the last.
        let mut both = card.encode_to_vec();
        both.extend(status.encode_to_vec());
        let decoded = decode_request(&both).unwrap();
        assert_eq!(decoded.kind, status.kind);
        assert_eq!(decoded.as_of, 20261101, "as_of 0 is not on the wire");
    }

    #[test]
    fn bad_requests_get_a_reason() {
        let c = ctx("20261101");
        let none = handle(&c, pb::Request::default());
        assert_eq!(none.status, pb::Status::InvalidRequest as i32);
        assert!(none.reason.contains("no lookup"));
        let bad_day = handle(
            &c,
            pb::Request {
                as_of: 20261301,
                kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
            },
        );
        assert_eq!(bad_day.status, pb::Status::InvalidRequest as i32);
        assert!(bad_day.reason.starts_with("as_of:"), "{}", bad_day.reason);
        // Without a snapshot: unavailable.
        let status = handle(
            &c,
            pb::Request {
                as_of: 0,
                kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
            },
        );
        assert_eq!(status.status, pb::Status::Unavailable as i32);
    }
}
