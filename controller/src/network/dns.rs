//! Names on a network: a small DNS responder steward runs on each bridge
//! network's gateway address (port 53, UDP). From a container on network
//! N, `NAME` is container NAME of the asker's namespace on N and
//! `NAME.NAMESPACE` the one of NAMESPACE; anything else is forwarded to
//! the host's resolvers (`/etc/resolv.conf`, asked from the host, so a
//! loopback resolver such as systemd-resolved's works too).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

/// TTL of steward's answers: short, as containers come and go.
const TTL: u32 = 5;
/// How long one upstream resolver has to answer a forwarded query (a
/// client's own timeout is 5 s).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries in flight at once per network; more are dropped (the client
/// retries), so a flood of slow forwards never stalls the names.
const MAX_INFLIGHT: usize = 128;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    network: String,
    namespace: String,
    name: String,
}

#[derive(Default)]
struct Records {
    by_ip: HashMap<Ipv4Addr, Record>,
    /// (network, namespace, name) → address; the newest attachment wins.
    by_name: BTreeMap<(String, String, String), Ipv4Addr>,
}

/// The responder of every network, and the names it answers.
#[derive(Default)]
pub struct Dns {
    records: Arc<RwLock<Records>>,
    /// Gateways listened on.
    listening: Mutex<BTreeMap<Ipv4Addr, tokio::task::JoinHandle<()>>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        if let Ok(l) = self.listening.lock() {
            for h in l.values() {
                h.abort();
            }
        }
    }
}

impl Dns {
    pub fn add(&self, network: &str, namespace: &str, name: &str, ip: Ipv4Addr) {
        if let Ok(mut r) = self.records.write() {
            let rec = Record {
                network: network.into(),
                namespace: namespace.into(),
                name: name.into(),
            };
            r.by_name.insert(
                (rec.network.clone(), rec.namespace.clone(), rec.name.clone()),
                ip,
            );
            r.by_ip.insert(ip, rec);
        }
    }

    pub fn remove(&self, ip: Ipv4Addr) {
        if let Ok(mut r) = self.records.write() {
            if let Some(rec) = r.by_ip.remove(&ip) {
                let key = (rec.network, rec.namespace, rec.name);
                if r.by_name.get(&key) == Some(&ip) {
                    r.by_name.remove(&key);
                }
            }
        }
    }

    /// Listens on `gateway:53` for network `network` unless it does
    /// already. Fails while the address is not there (the bridge plugin
    /// assigns it at the network's first ADD): the next attach tries again.
    pub async fn listen(&self, network: &str, gateway: Ipv4Addr) -> std::io::Result<()> {
        if let Ok(l) = self.listening.lock() {
            if l.get(&gateway).is_some_and(|h| !h.is_finished()) {
                return Ok(());
            }
        }
        let sock = UdpSocket::bind(SocketAddr::from((gateway, 53))).await?;
        let records = self.records.clone();
        let net = network.to_string();
        let h = tokio::spawn(serve(sock, net, records));
        if let Ok(mut l) = self.listening.lock() {
            if let Some(old) = l.insert(gateway, h) {
                old.abort();
            }
        }
        tracing::info!(network, %gateway, "DNS responder listening");
        Ok(())
    }
}

async fn serve(sock: UdpSocket, network: String, records: Arc<RwLock<Records>>) {
    let sock = Arc::new(sock);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%network, error = %e, "DNS responder: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (sock, records, network) = (sock.clone(), records.clone(), network.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&query, from, &network, &records).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

/// A parsed question: the name (lowercase, no trailing dot), its type and
/// where the question section ends.
#[derive(Debug, PartialEq)]
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    end: usize,
}

fn parse_question(msg: &[u8]) -> Option<Question> {
    // A standard query (QR 0, opcode QUERY) with one question; the rest
    // is dropped.
    if msg.len() < 12 || msg[2] & 0x80 != 0 || msg[2] & 0x78 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        // No compression in a question; labels are at most 63.
        if len > 63 {
            return None;
        }
        let l = msg.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        qclass,
        end: i + 4,
    })
}

/// The reply header and question of `query`, with `rcode` and `answers`
/// A records of the asked name.
fn reply(query: &[u8], q: &Question, rcode: u8, answers: &[Ipv4Addr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.end + 16 * answers.len());
    out.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD; AA; RA.
    out.push(0x80 | (query[2] & 0x79) | 0x04);
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..q.end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// Which address `name` is for an asker at `from` on `network`, if it is
/// a container's: `Some(None)` for a container name with no address of
/// the asked family (answered empty, not forwarded).
fn lookup(records: &Records, network: &str, from: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    let (ns, n) = match parts.as_slice() {
        [n] => (records.by_ip.get(&from).map(|r| r.namespace.clone())?, *n),
        [n, ns] => (ns.to_string(), *n),
        _ => return None,
    };
    records
        .by_name
        .get(&(network.to_string(), ns, n.to_string()))
        .copied()
}

async fn answer(
    query: &[u8],
    from: SocketAddr,
    network: &str,
    records: &RwLock<Records>,
) -> Option<Vec<u8>> {
    let q = parse_question(query)?;
    let SocketAddr::V4(from4) = from else {
        return None;
    };
    let found = records
        .read()
        .ok()
        .and_then(|r| lookup(&r, network, *from4.ip(), &q.name));
    if let Some(ip) = found {
        if q.qclass == CLASS_IN && q.qtype == TYPE_A {
            return Some(reply(query, &q, 0, &[ip]));
        }
        // AAAA and the rest of a container's name: it exists, with no such
        // record (NODATA), so the asker does not wait on a forward.
        return Some(reply(query, &q, 0, &[]));
    }
    // A single label that is no container here is no name anywhere.
    if !q.name.contains('.') {
        return Some(reply(query, &q, RCODE_NXDOMAIN, &[]));
    }
    match forward(query).await {
        Some(r) => Some(r),
        None => Some(reply(query, &q, RCODE_SERVFAIL, &[])),
    }
}

/// The host's resolvers (`nameserver` lines of `/etc/resolv.conf`).
fn upstreams() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect()
}

async fn forward(query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams() {
        let bind: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(FORWARD_TIMEOUT, sock.recv(&mut buf)).await {
            // The same id, or it is not the answer to this query.
            if n >= 12 && buf[..2] == query[..2] {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn records() -> Records {
        let mut r = Records::default();
        for (ns, name, ip) in [
            ("default", "web", [10, 88, 0, 2]),
            ("default", "client", [10, 88, 0, 3]),
            ("other", "web", [10, 88, 0, 4]),
        ] {
            let ip = Ipv4Addr::from(ip);
            let rec = Record {
                network: "bridge".into(),
                namespace: ns.into(),
                name: name.into(),
            };
            r.by_name
                .insert(("bridge".into(), ns.into(), name.into()), ip);
            r.by_ip.insert(ip, rec);
        }
        r
    }

    #[test]
    fn names_resolve_in_the_askers_namespace_or_the_named_one() {
        let r = records();
        let client = Ipv4Addr::new(10, 88, 0, 3);
        assert_eq!(
            lookup(&r, "bridge", client, "web"),
            Some(Ipv4Addr::new(10, 88, 0, 2))
        );
        assert_eq!(
            lookup(&r, "bridge", client, "web.other"),
            Some(Ipv4Addr::new(10, 88, 0, 4))
        );
        assert_eq!(
            lookup(&r, "bridge", Ipv4Addr::new(10, 88, 0, 4), "web"),
            Some(Ipv4Addr::new(10, 88, 0, 4))
        );
        // Another network's containers are not seen; nor are longer names.
        assert_eq!(lookup(&r, "backend", client, "web.default"), None);
        assert_eq!(lookup(&r, "bridge", client, "web.default.svc"), None);
        // An asker steward does not know has no namespace for a bare name.
        assert_eq!(
            lookup(&r, "bridge", Ipv4Addr::new(192, 168, 1, 1), "web"),
            None
        );
    }

    #[test]
    fn an_a_query_gets_one_answer_with_the_question_echoed() {
        let q = query(0xbeef, "Web.default", TYPE_A);
        let parsed = parse_question(&q).expect("parses");
        assert_eq!(parsed.name, "web.default");
        let r = reply(&q, &parsed, 0, &[Ipv4Addr::new(10, 88, 0, 2)]);
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[12..parsed.end], &q[12..parsed.end]);
        assert_eq!(&r[r.len() - 4..], &[10, 88, 0, 2]);
    }

    #[test]
    fn malformed_queries_are_dropped() {
        assert_eq!(parse_question(&[0; 5]), None);
        let mut q = query(1, "web", TYPE_A);
        q.truncate(q.len() - 2);
        assert_eq!(parse_question(&q), None);
        // A response is not a query, nor is another opcode (NOTIFY, UPDATE).
        let mut r = query(1, "web", TYPE_A);
        r[2] |= 0x80;
        assert_eq!(parse_question(&r), None);
        let mut u = query(1, "web", TYPE_A);
        u[2] |= 5 << 3;
        assert_eq!(parse_question(&u), None);
        // A label longer than 63 (a compression pointer) is refused.
        let mut p = query(1, "web", TYPE_A);
        p[12] = 0xc0;
        assert_eq!(parse_question(&p), None);
    }

    #[tokio::test]
    async fn the_responder_answers_over_udp_and_removal_takes_effect() {
        let dns = Dns::default();
        // Loopback stands in for a gateway (port 53 needs root; the tests run as root).
        let gw = Ipv4Addr::new(127, 0, 0, 53 + 100);
        dns.listen("bridge", gw)
            .await
            .expect("listen on 127.0.0.153:53 (needs root)");
        dns.add("bridge", "default", "web", Ipv4Addr::new(10, 88, 0, 2));
        dns.add("bridge", "default", "asker", Ipv4Addr::new(127, 0, 0, 1));
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.connect((gw, 53)).await.expect("connect");
        let ask = |name: &'static str| {
            let sock = &sock;
            async move {
                sock.send(&query(7, name, TYPE_A)).await.expect("send");
                let mut buf = [0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                    .await
                    .expect("answer in time")
                    .expect("recv");
                buf[..n].to_vec()
            }
        };
        let r = ask("web").await;
        assert_eq!(&r[r.len() - 4..], &[10, 88, 0, 2]);
        dns.remove(Ipv4Addr::new(10, 88, 0, 2));
        let r = ask("web").await;
        assert_eq!(
            u16::from_be_bytes([r[6], r[7]]),
            0,
            "no answer once removed"
        );
        assert_eq!(r[3] & 0x0f, RCODE_NXDOMAIN);
    }
}
