//! TLS for the `tls` and `mtls` scenarios: the harness's own PKI, the generator's client side,
//! and a blocking probe that says what a target negotiated.
//!
//! - [`Pki`]: a CA, a server leaf for `localhost`/127.0.0.1 and a client leaf with the SPIFFE URI
//!   SAN `spiffe://bench.local/ns/bench/sa/client`, all ECDSA P-256, generated with `rcgen` into
//!   a temporary directory at the start of a run and removed at its end. Every proxy gets the
//!   same files.
//! - [`ClientTls`]: the generator's rustls client config (`ring` provider). It offers exactly one
//!   choice — TLS 1.3, `TLS13_AES_128_GCM_SHA256`, X25519, ALPN `http/1.1` — so that nginx,
//!   HAProxy and ringmesh all negotiate the same thing whatever their own preferences, and no
//!   session resumption, so that every new connection is a full handshake ([`ClientTls::resuming`]
//!   is the same client with a session cache, for the resumed-handshake runs).
//!   It does **not verify** the server's certificate (like `h2load`): the checks are the
//!   client's CPU, and on 2 cores the generator's core must not saturate before the proxy's
//!   does. The proxies' cost does not depend on what the client checks.
//! - [`TlsConn`]: a rustls client session over monoio's owned-buffer `TcpStream`, for the
//!   generator's HTTP/1.1 lanes. One copy each way through a ciphertext buffer; the generator has
//!   one request in flight per connection and drops a connection whose request timed out, so it
//!   needs no cancel-safe reads (unlike ringmesh's own adapter, `dataplane/src/tls/stream.rs`).
//! - [`negotiated`] and [`refuses_anonymous`]: blocking one-shot handshakes the harness makes
//!   against each target before measuring it, for the report.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// The client leaf's SPIFFE ID (URI SAN). nginx and HAProxy verify the chain only.
pub const CLIENT_SPIFFE_ID: &str = "spiffe://bench.local/ns/bench/sa/client";
/// The name the generator sends as SNI; the server leaf is for it and for 127.0.0.1.
pub const SERVER_NAME: &str = "localhost";
/// Client handshakes completed in this process, full and resumed (the generator's lanes only):
/// `compare` reads them around each run to report which share of its handshakes resumed.
pub static CLIENT_HANDSHAKES: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// `(full, resumed)` client handshakes so far.
pub fn client_handshakes() -> (u64, u64) {
    let get = |i: usize| CLIENT_HANDSHAKES[i].load(std::sync::atomic::Ordering::Relaxed);
    (get(0), get(1))
}

/// Ciphertext read per socket read: one full TLS record and its overhead.
const CIPHERTEXT_BUF: usize = 16 * 1024 + 512;

/// Paths of the PEM files every proxy is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// The CA certificate (client certificates must chain to it in `mtls`).
    pub ca: PathBuf,
    /// The server leaf certificate.
    pub cert: PathBuf,
    /// The server leaf's private key (PKCS#8).
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub cert_and_key: PathBuf,
}

/// The harness's PKI, on disk in a temporary directory (removed on drop) and in memory.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    /// Server-side files.
    pub files: PkiFiles,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
}

impl Pki {
    /// Generates a CA, a server leaf and a client leaf into a new directory under `parent`.
    pub fn generate(parent: &Path) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("ringmesh-bench-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringmesh-bench CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // rcgen's default key is ECDSA P-256 with SHA-256.
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

        let mut server = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".into()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client.subject_alt_names = vec![SanType::URI(CLIENT_SPIFFE_ID.try_into()?)];
        client
            .distinguished_name
            .push(DnType::CommonName, "bench client");
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;

        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            cert_and_key: dir.join("server-with-key.pem"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.cert, server_cert.pem())?;
        std::fs::write(&files.key, server_key.serialize_pem())?;
        std::fs::write(
            &files.cert_and_key,
            format!("{}{}", server_cert.pem(), server_key.serialize_pem()),
        )?;
        std::fs::write(dir.join("client.pem"), client_cert.pem())?;
        std::fs::write(dir.join("client.key"), client_key.serialize_pem())?;
        Ok(Self {
            dir,
            files,
            client_cert: client_cert.der().clone(),
            client_key: client_key.serialize_der(),
        })
    }

    /// The generator's client config; with the client certificate when `mtls`.
    pub fn client(&self, mtls: bool) -> anyhow::Result<ClientTls> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key.clone()));
        ClientTls::new(mtls.then(|| (self.client_cert.clone(), key)))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The generator's side of TLS: a rustls client config and the SNI it sends.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The config, shared by all connections (no session cache unless [`ClientTls::resuming`]).
    pub config: Arc<ClientConfig>,
    /// SNI.
    pub server_name: ServerName<'static>,
    /// Whether it presents a client certificate.
    pub has_client_cert: bool,
    /// Whether it resumes sessions ([`ClientTls::resuming`]).
    pub resumes: bool,
}

impl ClientTls {
    /// TLS 1.3, `TLS13_AES_128_GCM_SHA256`, X25519, ALPN `http/1.1`, no resumption, no server
    /// verification (see the module docs); with `client_cert`, presented when asked.
    pub fn new(
        client_cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> anyhow::Result<Self> {
        let provider = Arc::new(bench_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)));
        let has_client_cert = client_cert.is_some();
        let mut config = match client_cert {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key)?,
            None => builder.with_no_client_auth(),
        };
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            server_name: ServerName::try_from(SERVER_NAME)?,
            has_client_cert,
            resumes: false,
        })
    }

    /// The same client, but resuming sessions: a fresh in-memory cache of the tickets (TLS 1.3)
    /// or session IDs it is given, offered on its next connections. The generator gives each
    /// lane its own (rustls keeps at most 8 tickets per server name, fewer than the lanes that
    /// connect at once), so a lane resumes with what its previous connection received, like a
    /// returning client.
    pub fn resuming(&self) -> Self {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::in_memory_sessions(64);
        Self {
            config: Arc::new(config),
            resumes: true,
            ..self.clone()
        }
    }

    fn connection(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(io::Error::other)
    }
}

/// The `ring` provider restricted to the one suite and group every proxy supports.
fn bench_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![rustls::crypto::ring::kx_group::X25519],
        ..rustls::crypto::ring::default_provider()
    }
}

/// Accepts any server certificate and signature: a benchmark client on loopback talking to a
/// certificate the harness generated itself a moment ago (see the module docs for why).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS session over a monoio TCP stream: the generator's client side, or the built-in
/// upstream's server side (the `direct` target of the TLS scenarios).
#[derive(Debug)]
pub struct TlsConn {
    tcp: TcpStream,
    tls: rustls::Connection,
    /// Ciphertext read from the socket, not yet given to rustls.
    inbuf: Vec<u8>,
    /// Ciphertext rustls produced, being written.
    outbuf: Vec<u8>,
}

impl TlsConn {
    /// Makes a full handshake over `tcp` as the client.
    pub async fn connect(tcp: TcpStream, client: &ClientTls) -> io::Result<Self> {
        let conn = Self::handshake(tcp, client.connection()?.into()).await?;
        let resumed = conn.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        CLIENT_HANDSHAKES[usize::from(resumed)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(conn)
    }

    /// Makes the server side of a handshake over `tcp`.
    pub async fn accept(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let server = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Self::handshake(tcp, server.into()).await
    }

    async fn handshake(tcp: TcpStream, tls: rustls::Connection) -> io::Result<Self> {
        let mut conn = Self {
            tcp,
            tls,
            inbuf: Vec::with_capacity(CIPHERTEXT_BUF),
            outbuf: Vec::with_capacity(4096),
        };
        while conn.tls.is_handshaking() {
            if conn.tls.wants_write() {
                conn.flush().await?;
            } else if conn.read_tls().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        // The client's Finished (and, in mTLS, its certificate) go out with the first request
        // otherwise; send them now so the handshake is complete when this returns.
        conn.flush().await?;
        Ok(conn)
    }

    /// Encrypts and sends `data`; gives the buffer back.
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        if let Err(e) = self.tls.writer().write_all(&data) {
            return (Err(e), data);
        }
        (self.flush().await, data)
    }

    /// Appends decrypted bytes to `out`: at least one unless the peer closed (then `Ok(0)`).
    pub async fn read_append(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let (n, closed) = self.drain(out)?;
            if n > 0 {
                return Ok(n);
            }
            if closed || self.read_tls().await? == 0 {
                return Ok(0);
            }
            if self.tls.wants_write() {
                // A key update or an alert the reads produced.
                self.flush().await?;
            }
        }
    }

    /// Moves the plaintext rustls holds into `out`: `(bytes, peer sent close_notify)`.
    fn drain(&mut self, out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
        let mut total = 0;
        loop {
            let len = out.len();
            out.resize(len + 8192, 0);
            let res = self.tls.reader().read(&mut out[len..]);
            let n = *res.as_ref().unwrap_or(&0);
            out.truncate(len + n);
            match res {
                Ok(0) => return Ok((total, true)),
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((total, false)),
                Err(e) => return Err(e),
            }
        }
    }

    /// One socket read, fed to rustls; returns the ciphertext bytes read (0: EOF).
    async fn read_tls(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.inbuf);
        buf.clear();
        let (res, buf) = self.tcp.read(buf).await;
        self.inbuf = buf;
        let n = res?;
        let mut rest = &self.inbuf[..n];
        while !rest.is_empty() {
            self.tls.read_tls(&mut rest)?;
            if let Err(e) = self.tls.process_new_packets() {
                // Let the peer know why (rustls queued an alert), then fail.
                let _ = self.flush().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        Ok(n)
    }

    /// Writes out everything rustls has queued.
    async fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            let mut buf = std::mem::take(&mut self.outbuf);
            buf.clear();
            self.tls.write_tls(&mut buf)?;
            let (res, buf) = self.tcp.write_all(buf).await;
            self.outbuf = buf;
            res?;
        }
        Ok(())
    }
}

/// The built-in upstream's server config from the harness's PEM files: TLS 1.2 and 1.3, ALPN
/// `http/1.1`, and with `client_ca` a client certificate required and verified against it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)? {
                roots.add(c?)?;
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection, plaintext or TLS, with the two owned-buffer operations the generator's and the
/// upstream's HTTP/1.1 code need.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsConn>),
}

impl Conn {
    /// Writes all of `data`; gives the buffer back.
    pub async fn write_all(&mut self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Conn::Plain(tcp) => {
                let (res, back) = tcp.write_all(data).await;
                (res.map(|_| ()), back)
            }
            Conn::Tls(tls) => tls.write_all(data).await,
        }
    }

    /// Appends what arrives to `buf`; `Ok(0)` when the peer closed.
    pub async fn read_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Conn::Plain(tcp) => {
                let len = buf.len();
                let (res, slice) = tcp.read(buf.slice_mut(len..)).await;
                (res, slice.into_inner())
            }
            Conn::Tls(tls) => {
                let res = tls.read_append(&mut buf).await;
                (res, buf)
            }
        }
    }
}

/// One blocking handshake against `address`: what it negotiated, for the report, e.g.
/// "TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519, ALPN http/1.1, server key ECDSA P-256".
pub fn negotiated(address: SocketAddr, client: &ClientTls) -> Result<String, String> {
    let (mut conn, _tcp) = blocking_handshake(address, client)?;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("?".to_owned(), |s| format!("{:?}", s.suite()));
    let group = conn
        .negotiated_key_exchange_group()
        .map_or("?".to_owned(), |g| format!("{:?}", g.name()));
    let alpn = conn.alpn_protocol().map_or("none".to_owned(), |p| {
        String::from_utf8_lossy(p).into_owned()
    });
    let full = match conn.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full handshake",
    };
    let _ = conn.writer().flush();
    Ok(format!(
        "{version}, {suite}, {group}, ALPN {alpn}, {full}{}",
        if client.has_client_cert {
            ", client certificate presented"
        } else {
            ""
        }
    ))
}

/// Whether `address` resumes a session: one request on a first connection (which takes in the
/// session tickets the target sends), then a second handshake offering them.
pub fn resumes(address: SocketAddr, client: &ClientTls) -> bool {
    let resuming = client.resuming();
    let Ok((mut conn, mut tcp)) = blocking_handshake(address, &resuming) else {
        return false;
    };
    {
        let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
        if stream
            .write_all(
                b"GET /payload/16 HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n",
            )
            .is_err()
        {
            return false;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    blocking_handshake(address, &resuming)
        .is_ok_and(|(c, _)| c.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

/// Whether `address` refuses an HTTP request from a client that presents no certificate (what an
/// `mtls` target must do): anything but a 2xx answer counts as refused.
pub fn refuses_anonymous(address: SocketAddr, anonymous: &ClientTls) -> bool {
    let Ok((mut conn, mut tcp)) = blocking_handshake(address, anonymous) else {
        return true;
    };
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    if stream
        .write_all(b"GET /payload/16 HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return true;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let status = answer
        .split(|b| *b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
    !status.is_some_and(|s| (200..300).contains(&s))
}

fn blocking_handshake(
    address: SocketAddr,
    client: &ClientTls,
) -> Result<(ClientConnection, std::net::TcpStream), String> {
    let timeout = Duration::from_secs(2);
    let fail = |e: io::Error| format!("TLS probe of {address}: {e}");
    let mut tcp = std::net::TcpStream::connect_timeout(&address, timeout).map_err(fail)?;
    tcp.set_read_timeout(Some(timeout)).map_err(fail)?;
    tcp.set_write_timeout(Some(timeout)).map_err(fail)?;
    let mut conn = client.connection().map_err(fail)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(fail)?;
    }
    Ok((conn, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PKI is ECDSA P-256 throughout and the client leaf carries the SPIFFE URI SAN.
    #[test]
    fn pki_files_are_written_and_removed() {
        let pki = Pki::generate(&std::env::temp_dir()).expect("pki");
        let files = pki.files.clone();
        for path in [&files.ca, &files.cert, &files.key, &files.cert_and_key] {
            let text = std::fs::read_to_string(path).expect("pem");
            assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        }
        let both = std::fs::read_to_string(&files.cert_and_key).expect("pem");
        assert!(both.contains("CERTIFICATE") && both.contains("PRIVATE KEY"));
        // id-ecPublicKey + prime256v1 in the leaf's SubjectPublicKeyInfo.
        let der = pki.client_cert.as_ref();
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(der.windows(p256.len()).any(|w| w == p256));
        assert!(
            der.windows(CLIENT_SPIFFE_ID.len())
                .any(|w| w == CLIENT_SPIFFE_ID.as_bytes())
        );
        assert!(pki.client(true).expect("client").has_client_cert);
        assert!(!pki.client(false).expect("client").has_client_cert);
        drop(pki);
        assert!(!files.ca.exists(), "removed on drop");
    }
}
