//! Minimal HTTP/1.1 receivers on 127.0.0.1 with scripted answers, plain or
//! TLS (optionally requiring a client certificate), and a throwaway PKI.
//! Written by hand so a test controls every byte and every delay.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::hmac;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        server::WebPkiClientVerifier,
    },
};

#[derive(Clone, Copy, Debug)]
pub enum Script {
    Ok,
    /// `times` failures (the first with `first_status` and Retry-After,
    /// later ones with `then_status`), then 200.
    Fail {
        times: usize,
        first_status: u16,
        retry_after: Option<u64>,
        then_status: u16,
    },
    Always(u16),
    /// Reads the request and never answers.
    Hang,
    /// Answers 200 after a delay.
    Delay(Duration),
}

/// One request as received.
#[derive(Debug)]
pub struct Got {
    pub at: Instant,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the HMAC header verified, when the receiver checks one.
    pub signature_ok: Option<bool>,
    /// Whether the TLS client presented a certificate (TLS receivers only).
    pub client_cert: Option<bool>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Receiver {
    pub url: String,
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Got>,
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    pub fn https_url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    /// The next request; panics after 5 s so a broken test fails, not hangs.
    pub async fn next(&mut self) -> Got {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("no request within 5 s")
            .expect("receiver stopped")
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

struct Shared {
    script: Script,
    hmac: Option<(String, hmac::Key)>,
    hits: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Got>,
}

pub async fn receiver(
    script: Script,
    tls: Option<TlsAcceptor>,
    hmac_check: Option<(&str, &[u8])>,
) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Shared {
        script,
        hmac: hmac_check.map(|(h, k)| (h.to_owned(), hmac::Key::new(hmac::HMAC_SHA256, k))),
        hits: hits.clone(),
        tx,
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shared = shared.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve(stream, &shared, None).await,
                    Some(acceptor) => {
                        // A failed handshake (untrusted CA, missing client
                        // certificate) is part of what tests check.
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let has_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            serve(tls, &shared, Some(has_cert)).await;
                        }
                    }
                }
            });
        }
    });
    Receiver {
        url: format!("http://{addr}/hook"),
        addr,
        rx,
        hits,
    }
}

/// Keep-alive loop: one request after another on one connection.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: &Shared,
    client_cert: Option<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let Some((headers, body)) = read_request(&mut s, &mut buf).await else {
            return;
        };
        let n = shared.hits.fetch_add(1, Ordering::SeqCst);
        let signature_ok = shared.hmac.as_ref().map(|(name, key)| {
            let expected = hmac::sign(key, &body);
            let hex: String = expected
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && *v == format!("sha256={hex}"))
        });
        let _ = shared.tx.send(Got {
            at: Instant::now(),
            headers,
            body,
            signature_ok,
            client_cert,
        });
        let (status, retry_after) = match shared.script {
            Script::Ok => (200, None),
            Script::Always(status) => (status, None),
            Script::Fail {
                times,
                first_status,
                retry_after,
                then_status,
            } => match n {
                0 if times > 0 => (first_status, retry_after),
                n if n < times => (then_status, None),
                _ => (200, None),
            },
            Script::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Script::Delay(d) => {
                tokio::time::sleep(d).await;
                (200, None)
            }
        };
        let extra = retry_after
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default();
        let response = format!("HTTP/1.1 {status} Scripted\r\nContent-Length: 2\r\n{extra}\r\nok");
        if s.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Headers and body of the next request, or `None` at end of stream.
async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Some((headers, body))
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
pub struct TestPki {
    pub ca_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Egret test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "egret-agent");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");

        TestPki {
            ca_pem: ca_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
            server_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
        }
    }

    pub fn server_tls(&self, require_client_cert: bool) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("CA into store");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let config = builder
            .with_single_cert(vec![self.server_der.clone()], key)
            .expect("server cert and key");
        TlsAcceptor::from(Arc::new(config))
    }
}
