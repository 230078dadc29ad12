//! Every manifest under `manifests/examples/` runs as a new user would run it
//! after `make run`: the same busybox image (served here by the harness's
//! registry instead of 127.0.0.1:5000), applied as one folder, each object
//! reaching the steady state its restart policy calls for.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use steward_e2e::*;

const T: Duration = Duration::from_secs(60);
/// The image every example names: what `make run` pushes.
const MAKE_RUN_IMAGE: &str = "127.0.0.1:5000/busybox:1.36";

#[test]
fn every_example_manifest_runs() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(dir.path());
    let steward = Steward::start(&dir.path().join("data"));

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let copy = dir.path().join("examples");
    std::fs::create_dir(&copy).expect("mkdir");
    let mut files = 0;
    for entry in std::fs::read_dir(&examples).expect("manifests/examples") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read example");
        assert!(text.contains(MAKE_RUN_IMAGE), "{} does not use {MAKE_RUN_IMAGE}, the image `make run` serves", path.display());
        std::fs::write(copy.join(path.file_name().expect("file name")), text.replace(MAKE_RUN_IMAGE, &registry.image()))
            .expect("write example");
        files += 1;
    }
    assert!(files >= 2, "expected the example manifests in {}", examples.display());

    steward.ok(&["apply", "-f", &copy.to_string_lossy()]);
    let list: Value =
        serde_json::from_str(&steward.ok(&["get", "containers", "-o", "json"])).expect("get -o json");
    let items = list["items"].as_array().expect("items").clone();
    assert!(items.len() >= 3, "every example object stored: {list:#}");

    for item in &items {
        let name = item["metadata"]["name"].as_str().expect("name").to_string();
        let policy = item.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or("Always").to_string();
        if policy == "Always" {
            steward.wait(&name, "Running and Ready", T, |v| {
                phase(v) == "Running"
                    && v.pointer("/status/conditions/0/status").and_then(Value::as_str) == Some("True")
            });
        } else {
            steward.wait(&name, "Succeeded", T, |v| phase(v) == "Succeeded");
        }
    }
    // Still up a little later, never restarted: not a crash loop that
    // happened to be caught while Running.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
    }
    for item in &items {
        let name = item["metadata"]["name"].as_str().expect("name");
        let v = steward.get(name).expect("object");
        assert_eq!(v.pointer("/status/restartCount").and_then(Value::as_u64), Some(0), "{name} restarted: {v:#}");
        assert!(matches!(phase(&v), "Running" | "Succeeded"), "{name}: {v:#}");
    }

    // web serves HTTP on the host network, as the example says.
    let web = items.iter().any(|i| i["metadata"]["name"] == "web");
    if web {
        let port = std::fs::read_to_string(examples.join("web.yaml"))
            .ok()
            .and_then(|t| t.split("httpd -f -p ").nth(1).map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>()))
            .filter(|p| !p.is_empty())
            .expect("web.yaml runs `httpd -f -p PORT`");
        let answer = wait_for("web's httpd to answer", T, || {
            let o = std::process::Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{port}/"))
                .output()
                .ok()?;
            let code = String::from_utf8_lossy(&o.stdout).into_owned();
            (code != "000" && !code.is_empty()).then_some(code)
        });
        assert_eq!(answer, "200", "web answers its index page");
    }
}
