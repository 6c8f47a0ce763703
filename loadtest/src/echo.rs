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

/// Requests up to this size are taken as one lookup without decoding them
/// (a single lookup encodes to under 200 bytes), so that the ceiling of
/// single requests stays a pure QUIC figure.
const SINGLE_MAX_BYTES: usize = 256;

/// How many answers' worth the reply to `request` is: a batch's items, one
/// for anything else (a request that does not decode included).
fn answers(request: &[u8]) -> usize {
    use qualcache::protocol::pb;
    if request.len() <= SINGLE_MAX_BYTES {
        return 1;
    }
    match <pb::Request as prost::Message>::decode(request) {
        Ok(pb::Request {
            kind: Some(pb::request::Kind::Batch(b)),
            ..
        }) => b.items.len().clamp(1, MAX_ITEMS),
        _ => 1,
    }
}

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
