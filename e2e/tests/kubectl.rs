//! The machine's kubectl 1.32 against a default `steward serve` (HTTPS,
//! token on) through the kubeconfig it writes, with real containers:
//! discovery, client-side apply of a folder twice, a label surviving the
//! next apply, server-side apply, diff's exit codes, get as a table, wide,
//! yaml and watch, wait, describe with Events, explain, delete with a
//! grace period, and wait --for=delete.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use steward_e2e::*;

const T: Duration = Duration::from_secs(60);
const KUBECTL_HINT: &str = "kubectl 1.32 is expected at /usr/bin/kubectl (it is on every machine of this kind; else apt-get install -y kubectl from the Kubernetes apt repository)";

fn kubectl(s: &Steward, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.kubeconfig().parent().expect("data dir"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e}; {KUBECTL_HINT}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// kubectl, which must succeed without complaining about discovery.
fn ok(s: &Steward, args: &[&str]) -> String {
    let o = kubectl(s, args);
    assert!(o.status.success(), "kubectl {args:?} failed ({:?}):\n{}{}", o.status.code(), text(&o.stdout), text(&o.stderr));
    assert!(!text(&o.stderr).contains("unable to retrieve"), "kubectl {args:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

fn rv(s: &Steward, name: &str) -> String {
    ok(s, &["get", "container", name, "-o", "jsonpath={.metadata.resourceVersion}"])
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, body).expect("write manifest");
    f.to_string_lossy().into_owned()
}

#[test]
fn kubectl_drives_steward_through_its_kubeconfig() {
    let e = Env::start();
    let (s, img) = (&e.steward, e.registry.image());
    let apps = e.dir.path().join("apps");
    std::fs::create_dir(&apps).expect("mkdir");
    // `web` ignores SIGTERM and asks for 30 s of grace.
    let web = manifest("web", &img, "  command: [sh, -c, \"trap '' TERM; while true; do sleep 1; done\"]\n  terminationGracePeriodSeconds: 30\n");
    write(&apps, "web.yaml", &web);
    write(&apps, "db.yaml", &manifest("db", &img, "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n"));
    let apps_arg = apps.to_string_lossy().into_owned();

    // Discovery: both groups, no complaint.
    let resources = ok(s, &["api-resources"]);
    assert!(resources.lines().any(|l| l.starts_with("containers") && l.contains("steward.dev/v1alpha1")), "{resources}");
    assert!(resources.lines().any(|l| l.starts_with("events") && l.contains("Event")), "{resources}");

    // A folder, applied twice: created, then unchanged with no write.
    let out = ok(s, &["apply", "-f", &apps_arg]);
    assert!(out.contains("container.steward.dev/db created") && out.contains("container.steward.dev/web created"), "{out}");
    for name in ["web", "db"] {
        s.wait(name, "Running", T, |v| phase(v) == "Running");
    }
    let before = (rv(s, "web"), rv(s, "db"));
    let out = ok(s, &["apply", "-f", &apps_arg]);
    assert!(out.contains("container.steward.dev/db unchanged") && out.contains("container.steward.dev/web unchanged"), "{out}");
    assert_eq!((rv(s, "web"), rv(s, "db")), before, "an unchanged apply moved a resourceVersion");
    // A label added by hand survives the next apply.
    ok(s, &["label", "container", "web", "tier=front"]);
    let out = ok(s, &["apply", "-f", &apps_arg]);
    assert!(out.contains("web unchanged") || out.contains("web configured"), "{out}");
    assert_eq!(ok(s, &["get", "container", "web", "-o", "jsonpath={.metadata.labels.tier}"]), "front");

    // diff: 0 without changes, 1 with.
    let o = kubectl(s, &["diff", "-f", &apps_arg]);
    assert_eq!(o.status.code(), Some(0), "{}{}", text(&o.stdout), text(&o.stderr));
    let changed = e.dir.path().join("changed");
    std::fs::create_dir(&changed).expect("mkdir");
    write(&changed, "db.yaml", &manifest("db", &img, "  command: [sleep, \"3601\"]\n  terminationGracePeriodSeconds: 1\n"));
    let o = kubectl(s, &["diff", "-f", &changed.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1), "{}{}", text(&o.stdout), text(&o.stderr));
    assert!(text(&o.stdout).contains("3601"), "{}", text(&o.stdout));
    assert_eq!(rv(s, "db"), before.1, "diff wrote");

    // Server-side apply.
    let out = ok(s, &["apply", "--server-side", "-f", &changed.to_string_lossy()]);
    assert!(out.contains("container.steward.dev/db serverside-applied"), "{out}");
    s.wait("db", "replaced with the new command", T, |v| {
        phase(v) == "Running" && v.pointer("/spec/command/1").and_then(serde_json::Value::as_str) == Some("3601")
    });

    // A second field manager's other value conflicts, named; forced, it wins.
    let other = e.dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    write(&other, "db.yaml", &manifest("db", &img, "  command: [sleep, \"3602\"]\n  terminationGracePeriodSeconds: 1\n"));
    let other_arg = other.to_string_lossy().into_owned();
    let o = kubectl(s, &["apply", "--server-side", "--field-manager=other", "-f", &other_arg]);
    assert!(!o.status.success(), "a conflicting apply succeeded: {}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("conflict with \"kubectl\"") && err.contains(".spec.command"), "{err}");
    let out = ok(s, &["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", &other_arg]);
    assert!(out.contains("serverside-applied"), "{out}");
    let managers = ok(s, &["get", "container", "db", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[*].manager}"]);
    assert!(managers.contains("other"), "{managers}");
    s.wait("db", "replaced again", T, |v| {
        phase(v) == "Running" && v.pointer("/spec/command/1").and_then(serde_json::Value::as_str) == Some("3602")
    });

    // get: the table, wide, yaml.
    let out = ok(s, &["get", "containers"]);
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], "{out}");
    assert!(out.lines().any(|l| l.starts_with("web") && l.contains("1/1") && l.contains("Running")), "{out}");
    let out = ok(s, &["get", "containers", "-o", "wide"]);
    assert!(out.lines().next().unwrap_or_default().contains("IP"), "{out}");
    let out = ok(s, &["get", "containers", "-o", "yaml"]);
    assert!(out.contains("kind: List") && out.contains("kind: Container") && out.contains("name: web"), "{out}");
    ok(s, &["wait", "--for=condition=Ready", "container/web", "--timeout=60s"]);

    // get -w sees a change.
    let out_file = e.dir.path().join("watch.out");
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.kubeconfig().parent().expect("data dir"))
        .args(["get", "containers", "-w", "--output-watch-events"])
        .stdout(std::fs::File::create(&out_file).expect("watch output"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl: {e}; {KUBECTL_HINT}"));
    let seen = |what: &str| std::fs::read_to_string(&out_file).unwrap_or_default().contains(what);
    wait_for("the watch's first rows", T, || seen("web").then_some(()));
    ok(s, &["label", "container", "db", "watched=yes"]);
    wait_for("the watch to see the change", T, || {
        std::fs::read_to_string(&out_file).unwrap_or_default().lines().any(|l| l.starts_with("MODIFIED") && l.contains("db")).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();

    // describe shows the object's events.
    let out = ok(s, &["describe", "container", "web"]);
    let events = out.split("Events:").nth(1).unwrap_or_else(|| panic!("no Events:\n{out}"));
    for reason in ["Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "{reason} missing:\n{out}");
    }
    assert!(events.contains("steward"), "{out}");
    // steward's own describe and events say the same.
    let own = s.ok(&["describe", "container", "web"]);
    assert!(own.contains("Events:\n  Type") && own.contains("Started container web"), "{own}");
    let own = s.ok(&["events", "--for", "container/web"]);
    assert!(own.starts_with("LAST SEEN") && own.contains("Started") && !own.contains("container/db"), "{own}");

    // explain walks the OpenAPI documents (both groups).
    let out = ok(s, &["explain", "containers.spec.restartPolicy"]);
    assert!(out.contains("FIELD: restartPolicy"), "{out}");
    let out = ok(s, &["explain", "events.involvedObject"]);
    assert!(out.contains("KIND:       Event") && out.contains("FIELD: involvedObject"), "{out}");

    // Field validation: kubectl's default (Strict) refuses a typo, naming
    // it; --validate=warn drops it with a warning.
    let typo = e.dir.path().join("typo");
    std::fs::create_dir(&typo).expect("mkdir");
    let typo_file = write(&typo, "t.yaml", &manifest("typo", &img, "  imagee: x\n  network: none\n"));
    let o = kubectl(s, &["apply", "-f", &typo_file]);
    assert!(!o.status.success() && text(&o.stderr).contains("spec.imagee: unknown field"), "{}", text(&o.stderr));
    let o = kubectl(s, &["apply", "--validate=warn", "-f", &typo_file]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("Warning: unknown field \"spec.imagee\""), "{}", text(&o.stderr));
    ok(s, &["delete", "container", "typo"]);

    // delete --grace-period cuts the 30 s the spec asks for; kubectl waits.
    let t = Instant::now();
    let out = ok(s, &["delete", "container", "web", "--grace-period=1"]);
    assert!(out.contains("container.steward.dev \"web\" deleted"), "{out}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(20), "delete --grace-period=1 took {took:?}");
    assert!(s.get("web").is_none());
    let events = s.ok(&["events", "--for", "container/web"]);
    assert!(events.contains("Killing"), "{events}");

    // wait --for=delete, after a delete that does not wait.
    ok(s, &["delete", "container", "db", "--wait=false"]);
    ok(s, &["wait", "--for=delete", "container/db", "--timeout=60s"]);
    assert!(s.get("db").is_none());
    let o = kubectl(s, &["get", "container", "db"]);
    assert!(text(&o.stderr).contains("Error from server (NotFound)"), "{}", text(&o.stderr));
}

/// `steward apply --wait` follows each applied object to Ready, Succeeded
/// or failure, and exits 1 naming the failures.
#[test]
fn apply_wait_follows_each_object_to_its_end() {
    let e = Env::start();
    let (s, img) = (&e.steward, e.registry.image());
    let dir = e.dir.path().join("wait");
    std::fs::create_dir(&dir).expect("mkdir");
    write(&dir, "up.yaml", &manifest("up", &img, "  command: [sleep, \"3600\"]\n  terminationGracePeriodSeconds: 1\n  network: none\n"));
    write(&dir, "once.yaml", &manifest("once", &img, "  command: [\"true\"]\n  restartPolicy: Never\n  network: none\n"));
    let o = s.cli(&["apply", "-f", &dir.to_string_lossy(), "--wait", "--timeout", "90s"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("container.steward.dev/up Ready") && out.contains("container.steward.dev/once Succeeded"), "{out}");
    // An image that does not exist: the wait ends at the pull's failure.
    let bad = e.dir.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    write(&bad, "nope.yaml", &manifest("nope", &format!("{}/no-such-image:1", e.registry.addr), "  network: none\n"));
    let o = s.cli(&["apply", "-f", &bad.to_string_lossy(), "--wait", "--timeout", "90s"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}{err}", text(&o.stdout));
    assert!(err.contains("error: container.steward.dev/nope: ErrImagePull: "), "{err}");
}
