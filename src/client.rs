//! A `qualcache/1` client: one QUIC connection to a daemon, one stream per
//! request. Used by `qualcache query` and the load generator.

use std::net::SocketAddr;

use prost::Message;

use crate::protocol::pb;

/// Largest response accepted (a full batch of answers fits easily).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not bind a local UDP socket.
    #[error("binding a local socket: {0}")]
    Bind(std::io::Error),
    /// The connection could not be set up (address, handshake, certificate).
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection or stream failed.
    #[error("request failed: {0}")]
    Stream(String),
    /// The answer is not a `Response` message.
    #[error("the server's answer does not decode")]
    Decode,
    /// The server grants no stream credit now (it is short of CPU, or
    /// this connection has as many requests open as it may): the request
    /// was not sent.
    #[error("no stream credit: the server admits no more requests on this connection now")]
    NoCredit,
}

/// An error and its causes, `: `-separated ("read error: connection
/// lost: aborted by peer: ..."): quinn's stream errors name the cause only
/// in their source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Some errors already show their cause in their own text.
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Writes one request on a new stream and reads its answer.
async fn exchange(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    bytes: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let stream = |e: &dyn std::error::Error| ClientError::Stream(with_causes(e));
    match send.write_all(bytes).await {
        Ok(()) => send.finish().map_err(|e| stream(&e))?,
        // The server stopped reading (a request over its size limit)
        // and answers why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(e) => return Err(stream(&e)),
    }
    recv.read_to_end(MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| stream(&e))
}

/// A connection to a daemon.
#[derive(Debug)]
pub struct Client {
    /// Kept so the local socket lives as long as the connection.
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    /// Connects to `addr`, checking its certificate against `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<Client, ClientError> {
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let endpoint = quinn::Endpoint::client(local).map_err(ClientError::Bind)?;
        Client::connect_on(endpoint, addr, server_name, config).await
    }

    /// Connects using an existing endpoint (several connections may share
    /// one socket).
    pub async fn connect_on(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
        config: quinn::ClientConfig,
    ) -> Result<Client, ClientError> {
        let connect_err = |reason: String| ClientError::Connect { addr, reason };
        let conn = endpoint
            .connect_with(config, addr, server_name)
            .map_err(|e| connect_err(with_causes(&e)))?
            .await
            .map_err(|e| connect_err(with_causes(&e)))?;
        Ok(Client { endpoint, conn })
    }

    /// Sends one request and waits for its response.
    pub async fn request(&self, req: &pb::Request) -> Result<pb::Response, ClientError> {
        self.request_bytes(&req.encode_to_vec()).await
    }

    /// Sends raw request bytes (tests use this to send garbage).
    pub async fn request_bytes(&self, bytes: &[u8]) -> Result<pb::Response, ClientError> {
        let answer = self.request_raw(bytes).await?;
        pb::Response::decode(&answer[..]).map_err(|_| ClientError::Decode)
    }

    /// Sends raw request bytes and returns the encoded `Response` as it
    /// came (the load generator decodes only the statuses it checks).
    pub async fn request_raw(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Stream(with_causes(&e)))?;
        exchange(send, recv, bytes).await
    }

    /// [`request_raw`](Self::request_raw), but without waiting for stream
    /// credit: if the server grants none now, fails at once with
    /// [`ClientError::NoCredit`] and sends nothing (what a terminal does
    /// when the server sheds load through flow control).
    pub async fn try_request_raw(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        use futures_util::FutureExt;
        let stream = |e: &dyn std::error::Error| ClientError::Stream(with_causes(e));
        let (send, recv) = match self.conn.open_bi().now_or_never() {
            None => return Err(ClientError::NoCredit),
            Some(opened) => opened.map_err(|e| stream(&e))?,
        };
        exchange(send, recv, bytes).await
    }

    /// Opens a raw request stream (for callers that write the request in
    /// parts, such as tests of in-flight requests at shutdown).
    pub async fn open_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        self.conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Stream(with_causes(&e)))
    }

    /// The connection's transport statistics (datagrams, frames, losses).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Closes the connection without waiting (for clients sharing an
    /// endpoint: close them all, then wait for the endpoint once).
    pub fn close_now(&self) {
        self.conn.close(0u32.into(), b"done");
    }

    /// Closes the connection and waits until the server knows.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
    }
}
