//! A loopback proxy in front of the Lambda Runtime API that fills in a missing
//! `Lambda-Runtime-Deadline-Ms` header.
//!
//! `lambda_runtime` builds each invocation's context from the `/next` response's headers
//! and **panics** (`missing lambda-runtime-deadline-ms header`) when that one is absent,
//! before any of reseq's code runs: the process dies and the invocation is lost until it
//! times out. So `bootstrap` points `lambda_runtime` at this proxy (it rewrites
//! `AWS_LAMBDA_RUNTIME_API` at start, while the process is still single-threaded), and the
//! proxy forwards every request to the real API unchanged but for `Connection: close` (one
//! exchange per connection, so a response ends where its connection does). To a response
//! that carries an invocation (`Lambda-Runtime-Aws-Request-Id`) but no deadline it adds
//! `Lambda-Runtime-Deadline-Ms: 0` and logs a warning: 0 is no Unix time, so
//! [`crate::release_deadline`] treats the deadline as unknown and only the lease's release
//! budget bounds the invocation's releases.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The header `lambda_runtime` cannot do without.
pub const DEADLINE_HEADER: &str = "lambda-runtime-deadline-ms";
const REQUEST_ID_HEADER: &str = "lambda-runtime-aws-request-id";
/// The longest header block read (the Runtime API's are well under 1 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Binds the proxy on 127.0.0.1 (a free port) for the Runtime API at `upstream`
/// (`host:port`, the value of `AWS_LAMBDA_RUNTIME_API`).
pub fn bind() -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves until the process ends: each connection is one request to `upstream`.
pub async fn serve(listener: std::net::TcpListener, upstream: String) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "the Runtime API proxy cannot listen");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Err(err) = exchange(client, &upstream).await {
                        tracing::warn!(error = %err, "Runtime API proxy: an exchange failed");
                    }
                });
            }
            Err(err) => tracing::warn!(error = %err, "Runtime API proxy: accept failed"),
        }
    }
}

/// One request and its response, the response's head patched by [`with_deadline`].
async fn exchange(client: TcpStream, upstream: &str) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (head, rest) = read_head(&mut client_read).await?;
    server_write.write_all(&with_connection_close(&head)).await?;
    server_write.write_all(&rest).await?;
    let to_server = tokio::io::copy(&mut client_read, &mut server_write);
    let to_client = async {
        let (head, rest) = read_head(&mut server_read).await?;
        client_write.write_all(&with_deadline(&head)).await?;
        client_write.write_all(&rest).await?;
        tokio::io::copy(&mut server_read, &mut client_write).await?;
        client_write.shutdown().await
    };
    tokio::pin!(to_client);
    tokio::select! {
        result = &mut to_client => result,
        _ = to_server => to_client.await,
    }
}

/// Reads up to and including the blank line that ends an HTTP head; returns it and any
/// bytes read beyond it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head over 64 KiB"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the HTTP head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The head's lines without the final blank line, and whether a header is among them.
fn lines(head: &[u8]) -> Vec<&[u8]> {
    let body = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn is_header(line: &[u8], name: &str) -> bool {
    line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

fn assemble(lines: &[&[u8]], extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out
}

/// A request head with `Connection: close` instead of any `Connection` header.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let kept: Vec<&[u8]> = lines(head)
        .into_iter()
        .filter(|l| !is_header(l, "connection"))
        .collect();
    assemble(&kept, b"Connection: close\r\n")
}

/// A response head with `Lambda-Runtime-Deadline-Ms: 0` added when it carries an
/// invocation but no deadline; any other head unchanged.
pub fn with_deadline(head: &[u8]) -> Vec<u8> {
    let lines = lines(head);
    let invocation = lines.iter().any(|l| is_header(l, REQUEST_ID_HEADER));
    let has_deadline = lines.iter().any(|l| is_header(l, DEADLINE_HEADER));
    if !invocation || has_deadline {
        return head.to_vec();
    }
    tracing::warn!(
        "the Lambda Runtime API sent an invocation without a Lambda-Runtime-Deadline-Ms header: its deadline is \
         unknown, so only the release budget (3/4 of RESEQ_LEASE_DURATION) bounds its releases"
    );
    let kept: Vec<&[u8]> = lines.into_iter().filter(|l| !is_header(l, "connection")).collect();
    assemble(&kept, b"Lambda-Runtime-Deadline-Ms: 0\r\nConnection: close\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DEADLINE: &[u8] = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: r-1\r\nContent-Length: 2\r\n\r\n";

    #[test]
    fn an_invocation_without_a_deadline_gets_deadline_zero() {
        let patched = String::from_utf8(with_deadline(NO_DEADLINE)).unwrap();
        assert!(patched.starts_with("HTTP/1.1 200 OK\r\n"), "{patched}");
        assert!(patched.contains("\r\nLambda-Runtime-Deadline-Ms: 0\r\n"), "{patched}");
        assert!(
            patched.contains("Content-Length: 2\r\n") && patched.ends_with("\r\n\r\n"),
            "{patched}"
        );
        let with = b"HTTP/1.1 200 OK\r\nlambda-runtime-aws-request-id: r\r\nLambda-Runtime-Deadline-Ms: 17\r\n\r\n";
        assert_eq!(with_deadline(with), with.to_vec(), "a deadline is kept as it is");
        let accepted = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(with_deadline(accepted), accepted.to_vec(), "not an invocation");
    }

    #[test]
    fn requests_go_with_connection_close() {
        let head = b"POST /x HTTP/1.1\r\nHost: h\r\nconnection: keep-alive\r\nContent-Length: 3\r\n\r\n";
        let out = String::from_utf8(with_connection_close(head)).unwrap();
        assert_eq!(
            out,
            "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    /// A Runtime API stand-in that answers one request with `reply` and records it.
    async fn fake_api(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (mut request, rest) = read_head(&mut stream).await.unwrap();
            request.extend_from_slice(&rest);
            stream.write_all(reply).await.unwrap();
            stream.shutdown().await.unwrap();
            request
        });
        (addr, task)
    }

    #[tokio::test]
    async fn through_the_proxy_a_missing_deadline_arrives_as_zero_and_the_body_unchanged() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: r-1\r\nContent-Length: 2\r\n\r\n{}";
        let (upstream, api) = fake_api(reply).await;
        let (listener, addr) = bind().unwrap();
        tokio::spawn(serve(listener, upstream));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.contains("Lambda-Runtime-Deadline-Ms: 0\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n{}"), "{response}");
        let request = String::from_utf8(api.await.unwrap()).unwrap();
        assert!(
            request.starts_with("GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Connection: close"), "{request}");
    }
}
