//! A minimal plain-quinn echo server with the daemon's TLS setup: it reads
//! each request and answers with a fixed reply of the daemon's answer size.
//! It does no lookup, so it is the ceiling of what QUIC on this machine
//! allows.

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
    let reply = Arc::new(vec![0x5a; reply_bytes]);
    let mut acceptors = tokio::task::JoinSet::new();
    for endpoint in endpoints {
        acceptors.spawn(accept(endpoint, reply.clone()));
    }
    while acceptors.join_next().await.is_some() {}
    Ok(())
}

async fn accept(endpoint: quinn::Endpoint, reply: Arc<Vec<u8>>) {
    while let Some(incoming) = endpoint.accept().await {
        let reply = reply.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    // As the daemon does outside shutdown: finish the
                    // stream and let the connection deliver it.
                    if recv.read_to_end(1 << 20).await.is_ok()
                        && send.write_all(&reply).await.is_ok()
                    {
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}
