//! The API's certificates: a CA steward makes once (`DATA/pki/ca.crt`,
//! `ca.key`), serving certificates it issues from that CA, and the serving
//! certificate the server presents, swapped while it runs so that a
//! renewal (or an operator's new files) needs no restart.
//!
//! The CA lives ten years, as kubeadm's; a serving certificate one year,
//! renewed when a third of its life is left, as the kubelet renews its own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Shown as the path; the cause is the error's source (a report with
    /// its chain says both once).
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("making a certificate: {0}")]
    Generate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

/// How long the CA steward makes is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);
/// How long a serving certificate steward issues is valid.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// The CA's common name: `steward-ca@` and a digest of its public key, so
/// two stewards' CAs differ by name (a client trusting one reports the
/// other's certificate as of an unknown issuer), and the name can be made
/// again from the key alone to sign with.
fn ca_name(key: &rcgen::KeyPair) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.public_key_raw());
    format!("steward-ca@{}", hex::encode(&digest[..8]))
}

/// Steward's own CA.
pub struct Ca {
    pub cert_pem: String,
    key: rcgen::KeyPair,
    /// The CA certificate rebuilt from its key and name, to sign with
    /// (rcgen signs with a certificate object; its subject and key are the
    /// file's).
    issuer: rcgen::Certificate,
    pub not_after: Option<SystemTime>,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

fn ca_params(key: &rcgen::KeyPair, validity: Duration) -> Result<rcgen::CertificateParams, PkiError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| PkiError::Generate(e.to_string()))?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, ca_name(key));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + validity;
    Ok(p)
}

impl Ca {
    /// The CA under `dir` (`ca.crt`, `ca.key`), made when there is none.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                check_private(&key_path)?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
                let key = rcgen::KeyPair::from_pem(&key_pem)
                    .map_err(|e| PkiError::Invalid { path: key_path.clone(), message: format!("not a private key steward can use: {e}") })?;
                let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                    .map_err(|e| PkiError::Invalid { path: cert_path.clone(), message: format!("not a PEM certificate: {e}") })?;
                let not_after = not_after(&der);
                let issuer = ca_params(&key, CA_VALIDITY)?.self_signed(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
                Ok(Ca { cert_pem, key, issuer, not_after })
            }
            (false, false) => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                let key = rcgen::KeyPair::generate().map_err(|e| PkiError::Generate(e.to_string()))?;
                let params = ca_params(&key, CA_VALIDITY)?;
                let not_after = SystemTime::from(params.not_after);
                let issuer = params.self_signed(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
                let cert_pem = issuer.pem();
                // The key first: a crash between the two leaves no
                // certificate whose key is lost.
                write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
                tracing::info!(cert = %cert_path.display(), "created the API's certificate authority");
                Ok(Ca { cert_pem, key, issuer, not_after: Some(not_after) })
            }
            (false, true) => {
                // A first start killed between writing the key and its
                // certificate: the certificate is derived from the key
                // (its name and extensions are), so it is made again.
                check_private(&key_path)?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
                let key = rcgen::KeyPair::from_pem(&key_pem)
                    .map_err(|e| PkiError::Invalid { path: key_path.clone(), message: format!("not a private key steward can use: {e}") })?;
                let params = ca_params(&key, CA_VALIDITY)?;
                let not_after = SystemTime::from(params.not_after);
                let issuer = params.self_signed(&key).map_err(|e| PkiError::Generate(e.to_string()))?;
                let cert_pem = issuer.pem();
                write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
                tracing::warn!(cert = %cert_path.display(), "the CA's certificate was missing beside its key; made again from the key");
                Ok(Ca { cert_pem, key, issuer, not_after: Some(not_after) })
            }
            (true, false) => Err(PkiError::Invalid {
                path: key_path,
                message: "missing, while its partner is there; restore it, or remove both to make a new CA (kubeconfigs then need the new one)".into(),
            }),
        }
    }

    /// Whether a certificate issued by this CA verifies against its
    /// `ca.crt`: a CA file that is not the one steward made with its key
    /// (an operator's own) would sign certificates no client can check.
    pub fn check_pair(&self, dir: &Path) -> Result<(), PkiError> {
        let path = dir.join("ca.crt");
        let bad = |message: String| PkiError::Invalid { path: path.clone(), message };
        let issued = self.issue(&["localhost".to_string()], Duration::from_secs(3600))?;
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
        roots.add(ca).map_err(|e| bad(e.to_string()))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| bad(e.to_string()))?;
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).map_err(|e| PkiError::Generate(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| PkiError::Generate(e.to_string()))?;
        use rustls::client::danger::ServerCertVerifier;
        verifier.verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now()).map_err(|e| {
            bad(format!(
                "certificates signed with ca.key do not verify against it ({e}): DATA/pki holds steward's own CA only; \
                 present another certificate with --tls-cert-file, or remove DATA/pki to make a new CA"
            ))
        })?;
        Ok(())
    }

    /// A serving certificate for `sans` (DNS names and IP addresses),
    /// valid for `validity` (never past the CA).
    pub fn issue(&self, sans: &[String], validity: Duration) -> Result<Issued, PkiError> {
        let gen = |e: rcgen::Error| PkiError::Generate(e.to_string());
        let mut p = rcgen::CertificateParams::new(sans.to_vec()).map_err(gen)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "steward");
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        let mut end = now + validity;
        if let Some(ca_end) = self.not_after {
            end = end.min(time::OffsetDateTime::from(ca_end));
        }
        p.not_after = end;
        let key = rcgen::KeyPair::generate().map_err(gen)?;
        let cert = p.signed_by(&key, &self.issuer, &self.key).map_err(gen)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: SystemTime::from(end) })
    }
}

/// Whether `name` can go into a certificate: an IP address, or a DNS name
/// of letters, digits, `-`, `.` and a leading `*.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err("not an IP address or a DNS name (letters, digits, '-' and '.'; IDNs in their xn-- form)".into())
    }
}

/// The names a serving certificate for `listen` must carry: localhost and
/// the loopback addresses, the listen address, this host's name and
/// addresses when listening on all of them, and `extra` (`--tls-san`).
pub fn serving_names(listen: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if listen.is_unspecified() {
        if let Some(h) = hostname() {
            names.push(h);
        }
        names.extend(local_addresses().into_iter().map(|a| a.to_string()));
    } else {
        names.push(listen.to_string());
    }
    for e in extra {
        names.push(e.trim().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?.trim().to_string();
    (!h.is_empty() && h != "localhost").then_some(h)
}

/// The addresses of this host's interfaces.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free with freeifaddrs below; every
    // node is read only while the list lives.
    unsafe {
        if libc::getifaddrs(&mut ifaddrs) != 0 {
            return out;
        }
        let mut cur = ifaddrs;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        // Link-local addresses need a zone; no client uses them in a URL.
                        if ip.segments()[0] & 0xffc0 != 0xfe80 {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifaddrs);
    }
    out
}

/// A key file must be a regular file only its owner can read.
fn check_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(path).map_err(io(path))?;
    if !m.file_type().is_file() || m.permissions().mode() & 0o077 != 0 {
        return Err(PkiError::Invalid {
            path: path.to_path_buf(),
            message: "a private key must be a regular file that only its owner can read (chmod 600)".into(),
        });
    }
    Ok(())
}

/// Writes a file whole (temporary file, fsync, rename, fsync of the dir),
/// created with `mode`: a crash never leaves a half-written key.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk leaves no half-written temporary file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(PkiError::Io { path: path.to_path_buf(), source: e });
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// A certificate chain and key from PEM, ready to present.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, PkiError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Invalid { path: cert_path.to_path_buf(), message: format!("not a PEM certificate chain: {e}") })?;
    if chain.is_empty() {
        return Err(PkiError::Invalid { path: cert_path.to_path_buf(), message: "no certificate in it".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| PkiError::Invalid { path: key_path.to_path_buf(), message: format!("not a PEM private key: {e}") })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| PkiError::Invalid { path: key_path.to_path_buf(), message: format!("unsupported private key: {e}") })?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| PkiError::Invalid {
        path: key_path.to_path_buf(),
        message: format!("does not belong to the certificate in {}: {e}", cert_path.display()),
    })?;
    Ok(ck)
}

/// The certificate the server presents now; swapped whole on renewal.
#[derive(Debug)]
pub struct CertSlot(arc_swap::ArcSwap<CertifiedKey>);

impl CertSlot {
    pub fn new(first: CertifiedKey) -> Arc<CertSlot> {
        Arc::new(CertSlot(arc_swap::ArcSwap::from_pointee(first)))
    }

    pub fn replace(&self, next: CertifiedKey) {
        self.0.store(Arc::new(next));
    }

    /// What the server presents now (DER of the leaf).
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.0.load().cert.first().cloned()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The rustls server configuration presenting `slot`'s certificate, over
/// HTTP/1.1.
pub fn server_config(slot: Arc<CertSlot>) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Generate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// When a certificate (DER) stops being valid: its `notAfter`, read with
/// a few lines of DER rather than a full X.509 parser. `None` when the
/// certificate cannot be read that far.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    /// One DER element: (tag, contents, what follows it).
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = b.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)), &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (_, cert, _) = element(der)?;
    let (_, tbs, _) = element(cert)?;
    let mut rest = tbs;
    let (tag, _, r) = element(rest)?;
    if tag == 0xa0 {
        // The explicit version; the serial number follows.
        rest = r;
        let (_, _, r) = element(rest)?;
        rest = r;
    } else {
        rest = r;
    }
    // signature algorithm, issuer, then validity.
    let (_, _, r) = element(rest)?;
    let (_, _, r) = element(r)?;
    let (_, validity, _) = element(r)?;
    let (_, _, r) = element(validity)?;
    let (tag, t, _) = element(r)?;
    let t = std::str::from_utf8(t).ok()?;
    let full = match tag {
        0x17 => {
            let yy: u32 = t.get(..2)?.parse().ok()?;
            format!("{}{t}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => t.to_string(),
        _ => return None,
    };
    let dt = chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S").ok()?;
    let secs = u64::try_from(dt.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_ca_is_reused_and_its_certificates_verify_for_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        // A certificate issued by the CA as loaded again verifies against
        // the CA file, for its names and not for others.
        let issued = again.issue(&serving_names("127.0.0.1".parse().unwrap(), &["steward.example".into()]), SERVING_VALIDITY).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        use rustls::client::danger::ServerCertVerifier;
        for name in ["localhost", "127.0.0.1", "steward.example"] {
            let n = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&leaf, &[], &n, &[], now).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("example.org").unwrap();
        assert!(verifier.verify_server_cert(&leaf, &[], &other, &[], now).is_err());
        // notAfter read back from the DER is the one asked for.
        let read = not_after(&leaf).unwrap();
        let diff = read.duration_since(issued.not_after).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(2), "{diff:?}");
        assert!(certified_key(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes(), Path::new("c"), Path::new("k")).is_ok());
        // A key that is not the certificate's is refused by name.
        let e = certified_key(issued.cert_pem.as_bytes(), again.key.serialize_pem().as_bytes(), Path::new("c"), Path::new("k.pem"))
            .unwrap_err();
        assert!(e.to_string().starts_with("k.pem: does not belong"), "{e}");
    }

    #[test]
    fn a_lone_ca_file_or_a_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Ca::load_or_create(dir.path()).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let e = Ca::load_or_create(dir.path()).err().unwrap();
        assert!(e.to_string().contains("ca.key: missing"), "{e}");
    }

    #[test]
    fn a_key_without_its_certificate_gets_the_certificate_again() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(again.key.serialize_pem(), ca.key.serialize_pem());
        assert!(dir.path().join("ca.crt").exists());
        again.check_pair(dir.path()).unwrap();
    }
}
