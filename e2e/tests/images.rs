//! Images as a resource, on real containerd and a real registry: the
//! read-only Image view (`steward image ls`, `GET .../images[/{name}]`),
//! `pull`, `rm` (refused while a Container uses the image, naming it),
//! `prune`, and image garbage collection: with thresholds that the image
//! filesystem is already past, the collector removes every unused image,
//! least recently used first, and never one a Container uses.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);

fn push_variant(reg: &Registry, dir: &std::path::Path, repo: &str, variant: &str) -> String {
    let d = dir.join(format!("variant-{variant}"));
    let reference = format!("{}/{repo}", reg.addr);
    let img = steward_testimage::build_busybox_oci_archive_variant(&d, &reference, Some(variant)).expect("build image");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", img.archive.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap_or_else(|e| panic!("skopeo: {e}; {INSTALL}"));
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    reference
}

fn api(s: &Steward, method: &str, path: &str) -> (u16, Value) {
    let (code, body) = s.request(method, &format!("/apis/steward.dev/v1alpha1{path}"));
    (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: steward.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n"
    )
}

#[test]
fn images_are_listed_removed_when_unused_and_collected_past_the_threshold() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start(dir.path());
    let a = push_variant(&reg, dir.path(), "app:a", "a");
    let b = push_variant(&reg, dir.path(), "app:b", "b");
    let c = push_variant(&reg, dir.path(), "app:c", "c");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "images:\n  gc: {highThresholdPercent: 99, lowThresholdPercent: 98}\n").expect("write");
    let s = Steward::start_with(&dir.path().join("data"), &["--config", &file.to_string_lossy(), "--gc-interval", "2s"]);

    // A Container uses `a`; `b` and `c` are pulled by hand.
    s.apply(dir.path(), "user", &manifest("user", &a));
    let user = s.wait("user", "Running", T, |v| phase(v) == "Running");
    let digest_a = user["status"]["imageDigest"].as_str().expect("imageDigest").to_string();
    for r in [&b, &c] {
        let out = s.ok(&["image", "pull", r]);
        assert!(out.contains("pulled (sha256:"), "{out}");
    }
    let ls = s.ok(&["image", "ls"]);
    eprintln!("{ls}");
    for r in [&a, &b, &c] {
        assert!(ls.contains(r.as_str()), "{r} listed:\n{ls}");
    }
    assert!(ls.lines().any(|l| l.contains(a.as_str()) && l.contains("default/user")), "a's user shown:\n{ls}");

    // The API: a list, and one Image by name, with its users.
    let (code, list) = api(&s, "GET", "/images");
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "ImageList");
    let name_a = digest_a.replacen(':', "-", 1);
    let (code, img) = api(&s, "GET", &format!("/images/{name_a}"));
    assert_eq!(code, 200, "{img}");
    assert_eq!(img["kind"], "Image");
    assert_eq!(img["status"]["digest"], digest_a.as_str());
    assert!(img["status"]["size"].as_u64().is_some_and(|n| n > 0), "{img}");
    assert_eq!(img["status"]["usedBy"][0]["name"], "user", "{img}");

    // Removal is refused while a Container uses it, naming it.
    let (code, st) = api(&s, "DELETE", &format!("/images/{name_a}"));
    assert_eq!(code, 409, "{st}");
    assert!(st["message"].as_str().is_some_and(|m| m.contains("default/user")), "{st}");
    let out = s.cli(&["image", "rm", &a]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("in use"), "{}", String::from_utf8_lossy(&out.stderr));
    // dryRun: checked, not removed; a pull cannot be dry.
    let digest_b = s.ok(&["image", "ls"]).lines().find(|l| l.contains(b.as_str())).and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_string();
    let (_, list) = api(&s, "GET", "/images");
    let name_b = list["items"].as_array().into_iter().flatten().find(|i| i["status"]["digest"].as_str().is_some_and(|d| d.starts_with(&digest_b))).map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_string()).expect("b listed");
    let (code, _) = api(&s, "DELETE", &format!("/images/{name_b}?dryRun=All"));
    assert_eq!(code, 200);
    assert!(s.ok(&["image", "ls"]).contains(b.as_str()), "a dry-run delete removed it");
    assert_eq!(api(&s, "POST", "/images/pull?dryRun=All").0, 400);
    // An unused one goes, by reference.
    let out = s.ok(&["image", "rm", &b]);
    assert!(out.contains("removed"), "{out}");
    assert!(!s.ok(&["image", "ls"]).contains(b.as_str()));
    let (code, _) = api(&s, "GET", "/images/sha256-0000000000000000000000000000000000000000000000000000000000000000");
    assert_eq!(code, 404);

    // Garbage collection: thresholds the filesystem is past (1 % / 0 %),
    // reloaded live: `c` (unused) goes within a few sweeps, `a` stays.
    std::fs::write(&file, s.with_net("images:\n  gc: {highThresholdPercent: 1, lowThresholdPercent: 0, minimumAge: 0s}\n")).expect("write");
    let (code, body) = s.request("POST", "/-/reload");
    assert_eq!(code, 200, "{body}");
    wait_for("image garbage collection to remove the unused image", T, || (!s.ok(&["image", "ls"]).contains(c.as_str())).then_some(()));
    let ls = s.ok(&["image", "ls"]);
    assert!(ls.contains(a.as_str()), "the image a Container uses stays:\n{ls}");
    assert!(s.ctr(&["images", "ls", "-q"]).lines().any(|l| l.trim() == a), "containerd still has {a}");
    // `prune` removes what no Container uses once the Container is gone.
    s.ok(&["delete", "containers", "user", "--wait", "--timeout", "60s"]);
    std::fs::write(&file, s.with_net("images:\n  gc: {highThresholdPercent: 99, lowThresholdPercent: 98}\n")).expect("write");
    assert_eq!(s.request("POST", "/-/reload").0, 200);
    let out = s.ok(&["image", "prune"]);
    assert!(out.contains("image(s) removed"), "{out}");
    assert!(!s.ok(&["image", "ls"]).contains(a.as_str()), "pruned");
}
