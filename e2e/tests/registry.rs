//! Registries as users have them, against a real `docker-registry` over
//! TLS with htpasswd authentication and a CA the test makes: the CA from
//! `certs.d/<host>/ca.crt`, credentials from a Docker `config.json`, and a
//! `docker.io` mirror from `certs.d/docker.io/hosts.toml` that makes
//! `image: busybox:1.36` pull with no internet. Each failure on the way
//! must say what to fix.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n"
    )
}

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// Waits until the container's pull fails with a message containing every
/// one of `needles`; returns the message.
fn pull_error(s: &Steward, name: &str, needles: &[&str]) -> String {
    let v = s.wait(name, &format!("a pull error saying {needles:?}"), T, |v: &Value| {
        let msg = v.pointer("/status/state/waiting/message").and_then(Value::as_str).unwrap_or_default();
        matches!(waiting_reason(v), "ErrImagePull" | "ImagePullBackOff") && needles.iter().all(|n| msg.contains(n))
    });
    v.pointer("/status/state/waiting/message").and_then(Value::as_str).unwrap_or_default().to_string()
}

#[test]
fn tls_registry_with_a_ca_credentials_and_a_docker_io_mirror() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = TlsRegistry::start(
        dir.path(),
        &["busybox:wrongca", "busybox:nocreds", "busybox:badcreds", "busybox:ok", "library/busybox:1.36"],
    );
    let certs = dir.path().join("certs.d");
    let auth = dir.path().join("docker/config.json");
    let config = dir.path().join("config.yaml");
    write(&config, &format!("registry:\n  configPath: {}\n  authFile: {}\n", certs.display(), auth.display()));
    let s = Steward::start_with(&dir.path().join("data"), &["--config", &config.to_string_lossy()]);
    let host = &reg.addr;

    // 1. A CA that did not sign the registry's certificate: the error is a
    //    certificate error naming where the right CA goes (and steward does
    //    not fall back to plain http).
    let (other_ca, _, _) = make_ca_and_server_cert();
    write(&certs.join(host).join("ca.crt"), &other_ca);
    s.apply(dir.path(), "wrongca", &manifest("wrongca", &format!("{host}/busybox:wrongca")));
    let msg = pull_error(&s, "wrongca", &["TLS", "not trusted", &certs.join(host).join("ca.crt").display().to_string()]);
    eprintln!("wrong CA: {msg}");
    assert!(!reg.logs().contains("busybox/manifests/wrongca\" http.response.status=200"), "no manifest may be served over a failed TLS check");

    // 2. The right CA, no credentials: unauthorized, saying none were found
    //    and where they were looked for.
    write(&certs.join(host).join("ca.crt"), &reg.ca_pem);
    s.apply(dir.path(), "nocreds", &manifest("nocreds", &format!("{host}/busybox:nocreds")));
    let msg = pull_error(&s, "nocreds", &["unauthorized", "no credentials file", &auth.display().to_string()]);
    eprintln!("no credentials: {msg}");

    // 3. A wrong password: refused, naming the user and the file, never the
    //    password.
    let basic = |user: &str, pw: &str| {
        use std::io::Write;
        let mut b = Vec::new();
        write!(b, "{user}:{pw}").expect("format");
        base64_encode(&b)
    };
    write(&auth, &format!(r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#, basic(&reg.user, "wrong-pw")));
    s.apply(dir.path(), "badcreds", &manifest("badcreds", &format!("{host}/busybox:badcreds")));
    let msg = pull_error(&s, "badcreds", &["unauthorized", "refused", &format!("{:?}", reg.user), "config.json"]);
    assert!(!msg.contains("wrong-pw"), "a secret in a status message: {msg}");
    eprintln!("bad credentials: {msg}");

    // 4. The right credentials, in another file that a live reload of the
    //    configuration points at (no restart): it runs.
    let auth2 = dir.path().join("docker2/config.json");
    write(&auth2, &format!(r#"{{"auths": {{"https://{host}": {{"auth": "{}"}}}}}}"#, basic(&reg.user, &reg.password)));
    write(&config, &s.with_net(&format!("registry:\n  configPath: {}\n  authFile: {}\n", certs.display(), auth2.display())));
    let (code, reply) = s.request("POST", "/-/reload");
    assert!(code == 200 && reply.contains("\"digest\":\"sha256:"), "reload: {code} {reply}");
    s.apply(dir.path(), "ok", &manifest("ok", &format!("{host}/busybox:ok")));
    let v = s.wait("ok", "Running", T, |v| phase(v) == "Running");
    assert!(v["status"]["imageDigest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{v}");

    // 5. A docker.io mirror in certs.d/docker.io/hosts.toml (the TLS
    //    registry, with its CA and the credentials stored for its own
    //    host): `busybox:1.36` is docker.io/library/busybox:1.36, pulled
    //    from the mirror with no internet.
    write(
        &certs.join("docker.io/hosts.toml"),
        &format!(
            "server = \"https://registry-1.docker.io\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            certs.join(host).join("ca.crt").display()
        ),
    );
    s.apply(dir.path(), "hub", &manifest("hub", "busybox:1.36"));
    s.wait("hub", "Running from the mirror", T, |v| phase(v) == "Running");
    assert!(reg.logs().contains("/v2/library/busybox/manifests/1.36"), "the mirror served it");
    let images = s.ctr(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l.trim() == "docker.io/library/busybox:1.36"), "normalised name: {images}");
}

/// Standard base64 (the test's own, to keep the harness's dependencies few).
fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
