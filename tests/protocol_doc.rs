//! PROTOCOL.md's hex dumps are real: each decodes as the message it is
//! labelled with and encodes back to the same bytes. `print_examples`
//! (ignored) regenerates them.

use prost::Message;
use qualcache::protocol::pb;

fn examples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let q = pb::Qualification {
        insurer_number: "01130012".into(),
        insurer_name: "全国健康保険協会　東京支部".into(),
        card_class: "01".into(),
        symbol: "1234".into(),
        number: "567".into(),
        branch: "00".into(),
        relation: 1,
        name: "山田　太郎".into(),
        name_kana: "ヤマダ　タロウ".into(),
        sex: 1,
        birth_date: 19800101,
        acquired_date: 20100401,
        copay_percent: 30,
        ..Default::default()
    };
    let card = pb::CardLookup {
        serial: "0BFDED574DBACD9F".into(),
    };
    let ins = pb::InsuranceLookup {
        insurer: "01130012".into(),
        symbol: "1234".into(),
        number: "567".into(),
        branch: "00".into(),
        birth: 19800101,
    };
    let req = |kind| {
        pb::Request {
            as_of: 20261101,
            kind: Some(kind),
        }
        .encode_to_vec()
    };
    let found = pb::Answer {
        status: pb::Status::Valid as i32,
        qualification: Some(q),
        ..Default::default()
    };
    vec![
        (
            "card request",
            "Request",
            req(pb::request::Kind::Card(card.clone())),
        ),
        (
            "card response",
            "Response",
            pb::Response {
                status: 1,
                generation: 7,
                answer: Some(found.clone()),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "insurance request",
            "Request",
            req(pb::request::Kind::Insurance(ins.clone())),
        ),
        (
            "insurance response (not found)",
            "Response",
            pb::Response {
                status: pb::Status::NotFound as i32,
                generation: 7,
                answer: Some(pb::Answer {
                    status: pb::Status::NotFound as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "batch request",
            "Request",
            req(pb::request::Kind::Batch(pb::BatchLookup {
                items: vec![
                    pb::BatchItem {
                        kind: Some(pb::batch_item::Kind::Card(card)),
                    },
                    pb::BatchItem {
                        kind: Some(pb::batch_item::Kind::Insurance(ins)),
                    },
                ],
            })),
        ),
        (
            "batch response",
            "Response",
            pb::Response {
                status: pb::Status::Ok as i32,
                generation: 7,
                answers: vec![
                    pb::Answer {
                        status: pb::Status::CardRestricted as i32,
                        ..Default::default()
                    },
                    pb::Answer {
                        status: pb::Status::NotFound as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "status request",
            "Request",
            pb::Request {
                as_of: 0,
                kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
            }
            .encode_to_vec(),
        ),
        (
            "status response",
            "Response",
            pb::Response {
                status: pb::Status::Ok as i32,
                generation: 7,
                server: Some(pb::ServerStatus {
                    generation: 7,
                    records: 1_000_000,
                    snapshot_created_at_unix: 1_795_600_000,
                    uptime_seconds: 3_600,
                    connections: 1_000,
                    version: "0.1.0".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "invalid request response",
            "Response",
            pb::Response {
                status: pb::Status::InvalidRequest as i32,
                reason: "not a qualcache request (protobuf decoding failed)".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]
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
        println!(
            "#### {title} (`{ty}`, {} bytes)\n\n```hex\n{}\n```\n",
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
