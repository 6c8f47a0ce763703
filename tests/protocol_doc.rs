//! PROTOCOL.md's hex dumps are real: each is what this build's request
//! handler answers to its request, over one small data set (the
//! hand-made history of `util::history`), so the examples agree with each
//! other and with the server. Each decodes as the message it is labelled
//! with and encodes back to the same bytes. `print_examples` (ignored)
//! regenerates them.

mod util;

use prost::Message;
use qualcache::model::CardKey;
use qualcache::protocol::{self, pb, Context, Limits};

/// The examples: (title, message type, bytes). Requests are encoded by
/// hand; responses come from `protocol::handle_bytes` over the data set,
/// as of 2020-01-01 (`as_of` 20200101).
fn examples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let dir = util::tempdir();
    let snapshot = util::snapshot(dir.path(), util::history::records());
    let metrics = qualcache::metrics::Metrics::new();
    metrics
        .builds
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let key = CardKey::demo();
    let ctx = Context {
        snapshot: Some(&snapshot),
        overlay: None,
        card_key: &key,
        today: "20200101".parse().unwrap(),
        limits: Limits::default(),
        uptime_seconds: 3_600,
        now_unix: 1_795_603_600,
        connections: 1_000,
        metrics: &metrics,
    };
    let request = |kind| {
        pb::Request {
            as_of: 20200101,
            kind: Some(kind),
        }
        .encode_to_vec()
    };
    // Person 20: card 2A20, key 01130012 / 1234 / 2000 / 00, born 1970-01-01.
    let card = pb::CardLookup {
        serial: "2A20".into(),
    };
    let insurance = pb::InsuranceLookup {
        insurer: "01130012".into(),
        symbol: "1234".into(),
        number: "2000".into(),
        branch: "00".into(),
        birth: 19700101,
    };
    let wrong_birth = pb::InsuranceLookup {
        birth: 19700102,
        ..insurance.clone()
    };
    let bad_serial = pb::CardLookup {
        serial: "2A2O".into(),
    };
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("card", request(pb::request::Kind::Card(card.clone()))),
        (
            "insurance",
            request(pb::request::Kind::Insurance(insurance.clone())),
        ),
        (
            "insurance, wrong birth date",
            request(pb::request::Kind::Insurance(wrong_birth.clone())),
        ),
        (
            "batch",
            request(pb::request::Kind::Batch(pb::BatchLookup {
                items: vec![
                    pb::BatchItem {
                        kind: Some(pb::batch_item::Kind::Card(card)),
                    },
                    pb::BatchItem {
                        kind: Some(pb::batch_item::Kind::Insurance(wrong_birth)),
                    },
                ],
            })),
        ),
        (
            "card, serial not hexadecimal",
            request(pb::request::Kind::Card(bad_serial)),
        ),
        (
            "status",
            pb::Request {
                as_of: 0,
                kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
            }
            .encode_to_vec(),
        ),
        ("not protobuf", vec![0xff, 0xff, 0xff]),
    ];
    let mut out = Vec::new();
    for (what, bytes) in requests {
        let (_, mut response) = protocol::handle_bytes(&ctx, &bytes, None);
        if let Some(s) = response.server.as_mut() {
            // The one moment that changes from build to build (an hour
            // before `now_unix`).
            s.snapshot_created_at_unix = 1_795_600_000;
            s.snapshot_created_at = qualcache::model::date::iso_jst(1_795_600_000);
            s.snapshot_age_seconds = 3_600;
        }
        if what != "not protobuf" {
            out.push((what, "Request", bytes));
        }
        out.push((what, "Response", response.encode_to_vec()));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore]
fn print_examples() {
    for (title, ty, bytes) in examples() {
        let kind = ty.to_lowercase();
        println!(
            "#### {title}: {kind} (`{ty}`, {} bytes)\n\n```hex\n{}\n```\n",
            bytes.len(),
            hex(&bytes)
        );
    }
}

#[test]
fn protocol_md_hex_dumps_decode() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    let mut found = 0;
    let mut ty = "";
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#### ") {
            ty = if line.contains("`Request`") {
                "Request"
            } else {
                "Response"
            };
        }
        if line.trim() == "```hex" {
            let mut bytes = Vec::new();
            for l in lines.by_ref().take_while(|l| l.trim() != "```") {
                for h in l.split_whitespace() {
                    bytes.push(u8::from_str_radix(h, 16).unwrap());
                }
            }
            let again = match ty {
                "Request" => pb::Request::decode(&bytes[..]).unwrap().encode_to_vec(),
                _ => pb::Response::decode(&bytes[..]).unwrap().encode_to_vec(),
            };
            assert_eq!(again, bytes, "a {ty} hex dump does not round-trip");
            found += 1;
        }
    }
    let expected = examples();
    assert_eq!(
        found,
        expected.len(),
        "PROTOCOL.md should show every example"
    );
    // And they are the current encodings of the examples.
    for (title, _, bytes) in expected {
        assert!(doc.contains(&hex(&bytes)), "PROTOCOL.md's {title} is stale");
    }
}
