//! A minimal plain-quinn echo server with the daemon's TLS setup: it reads
//! each request and answers with a reply of the daemon's answer size (one
//! answer's worth per lookup, so a batch of N gets N). It does no lookup,
//! so it is the ceiling of what QUIC on this machine allows.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

/// Serves until the process ends, on `endpoints` sockets sharing `listen`
/// with `SO_REUSEPORT`, as the daemon does (`server.endpoints`).
pub async fn serve(
    listen: SocketAddr,
    certs: &Path,
    reply_bytes: usize,
    endpoints: usize,
) -> Result<()> {
    let config = qualcache::tls::server_config(
        &certs.join("server.pem"),
        &certs.join("server.key"),
        &certs.join("ca.pem"),
        qualcache::tls::Transport::default(),
    )?;
    let endpoints = qualcache::server::bind_many(listen, config, 8 << 20, endpoints)?;
    eprintln!(
        "echo server on {} ({} endpoints)",
        endpoints[0].local_addr()?,
        endpoints.len()
    );
    let reply = Arc::new(vec![0x5a; reply_bytes * MAX_ITEMS]);
    let mut acceptors = tokio::task::JoinSet::new();
    for endpoint in endpoints {
        acceptors.spawn(accept(endpoint, reply.clone()));
    }
    while acceptors.join_next().await.is_some() {}
    Ok(())
}

/// The most lookups a reply is sized for (the daemon's default max_batch).
const MAX_ITEMS: usize = 1000;

/// How many answers' worth the reply to `request` is: a batch's items, one
/// for anything else (a request that does not decode included). Only the
/// batch's item count is decoded ([`BatchCount`]): no allocation, so the
/// ceiling stays a QUIC figure.
fn answers(request: &[u8]) -> usize {
    match <BatchCount as prost::Message>::decode(request) {
        Ok(BatchCount { batch: Some(b) }) => b.items.len().clamp(1, MAX_ITEMS),
        _ => 1,
    }
}

/// A `Request` seen only for its batch (field 4); other fields are
/// skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct BatchCount {
    #[prost(message, optional, tag = "4")]
    batch: Option<Items>,
}

/// A `BatchLookup`'s items (field 1), each decoded as an empty message.
#[derive(Clone, PartialEq, prost::Message)]
struct Items {
    #[prost(message, repeated, tag = "1")]
    items: Vec<Skipped>,
}

/// A message whose fields are all skipped (a zero-sized value: a `Vec`
/// of them does not allocate).
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

async fn accept(endpoint: quinn::Endpoint, reply: Arc<Vec<u8>>) {
    let per_answer = reply.len() / MAX_ITEMS;
    while let Some(incoming) = endpoint.accept().await {
        let reply = reply.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    // As the daemon does outside shutdown: finish the
                    // stream and let the connection deliver it.
                    let Ok(request) = recv.read_to_end(1 << 20).await else {
                        return;
                    };
                    let len = per_answer * answers(&request);
                    if send.write_all(&reply[..len]).await.is_ok() {
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qualcache::protocol::pb;

    fn encoded(kind: pb::request::Kind) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::Request {
            as_of: 20261101,
            kind: Some(kind),
        })
    }

    #[test]
    fn a_batch_gets_one_answer_per_item_whatever_its_size() {
        let card = || pb::BatchItem {
            kind: Some(pb::batch_item::Kind::Card(pb::CardLookup {
                serial: "0123456789ABCDEF".into(),
            })),
        };
        for n in [1, 2, 3, 100, 1000] {
            let batch = pb::BatchLookup {
                items: (0..n).map(|_| card()).collect(),
            };
            assert_eq!(answers(&encoded(pb::request::Kind::Batch(batch))), n);
        }
        let single = pb::request::Kind::Card(pb::CardLookup {
            serial: "0123456789ABCDEF".into(),
        });
        assert_eq!(answers(&encoded(single)), 1);
        assert_eq!(answers(b"\xff\xff not protobuf"), 1);
    }
}
