//! Opening a TCP connection to an endpoint: the one connect every upstream path uses (L4, the
//! HTTP/1.1 pool, HTTP/2 connections), so the timeout and socket options are the same for all.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;

/// Connects to `address` within `timeout`, with TCP_NODELAY set (every proxied socket has it).
pub async fn connect(address: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = monoio::time::timeout(timeout, TcpStream::connect_addr(address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
