# steward: `make run` sets up and starts steward; `make test` runs every test.
# Both install what is missing on a fresh Debian machine (as root).

CARGO     ?= cargo
# The default data dir of `steward serve` (and of the CLI's token file).
DATA_DIR  ?= /var/lib/steward
LISTEN    ?= 127.0.0.1:7420
APT_GET   := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run registry test deps deps-e2e build release schema fmt lint clean bench-store deps-bench bench-reconcile soak

# Debian packages: gcc (SQLite, bundled by sqlx), protoc (containerd's gRPC
# API), containerd, runc and crun (what steward drives: runc by default,
# crun as a runtime handler), the CNI plugins, iptables and iproute2
# (bridge networks: the plugins run iptables), and for the e2e suite a
# local registry, skopeo to push to it, busybox for the test image,
# sqlite3 (the fault suite checks the store file's integrity with it), and
# strace (the durability tests trace fsyncs), and Python's websocket-client
# (e2e/tests/exec.rs checks exec's protocol with a client of another library).
DEB_PACKAGES := gcc curl strace protobuf-compiler containerd runc crun docker-registry skopeo busybox-static sqlite3 containernetworking-plugins iptables iproute2 python3 python3-websocket
DEB_PROBES   := cc curl strace protoc containerd runc crun docker-registry skopeo /bin/busybox sqlite3 /usr/lib/cni/bridge iptables ip /usr/bin/python3 wsdump

deps:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@missing=0; for p in $(DEB_PROBES); do command -v $$p >/dev/null 2>&1 || [ -x $$p ] || missing=1; done; \
	if [ $$missing = 1 ]; then $(APT_GET) update && $(APT_GET) install -y $(DEB_PACKAGES); fi

# What the e2e suite needs (the same list: `make test` runs it).
deps-e2e: deps

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release -p steward

# Starts steward in the foreground on $(LISTEN) with its state in $(DATA_DIR),
# supervising its own containerd under $(DATA_DIR)/containerd. First makes
# sure a local registry serves $(REGISTRY)/busybox:1.36, the image of the
# example manifests.
run: release registry
	./target/release/steward serve --data-dir $(DATA_DIR) --listen $(LISTEN)

REGISTRY ?= 127.0.0.1:5000

# A local registry (Debian's docker-registry, state in $(DATA_DIR)/registry)
# holding a busybox image built from busybox-static; left running.
registry: deps
	@mkdir -p $(DATA_DIR)/registry
	@if ! curl -sf http://$(REGISTRY)/v2/ >/dev/null 2>&1; then \
		printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
			$(DATA_DIR)/registry/storage $(REGISTRY) > $(DATA_DIR)/registry/config.yml; \
		nohup docker-registry serve $(DATA_DIR)/registry/config.yml > $(DATA_DIR)/registry/registry.log 2>&1 & \
		for i in $$(seq 50); do curl -sf http://$(REGISTRY)/v2/ >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi
	@curl -sf http://$(REGISTRY)/v2/ >/dev/null || { echo "error: no registry at $(REGISTRY); see $(DATA_DIR)/registry/registry.log" >&2; exit 1; }
	@if ! curl -sf -o /dev/null http://$(REGISTRY)/v2/busybox/manifests/1.36 -H 'Accept: application/vnd.oci.image.index.v1+json'; then \
		$(CARGO) run -q --release -p steward-testimage --bin build-busybox-image -- $(DATA_DIR)/images $(REGISTRY)/busybox:1.36 >/dev/null && \
		skopeo copy --quiet --dest-tls-verify=false oci-archive:$(DATA_DIR)/images/busybox-oci.tar docker://$(REGISTRY)/busybox:1.36 && \
		echo "pushed $(REGISTRY)/busybox:1.36"; \
	fi

# Every test: unit, API integration, CLI against the real binary, and the
# crash-durability test (SIGKILL under load, 20+ cycles).
test: deps
	$(CARGO) build --workspace --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

# The fault suite, long (e2e/tests/fault.rs; `make test` runs it with a few
# rounds per scenario): kill -9 of steward during storms, kill -9 of
# containerd (supervised and external), a simulated reboot, changes while
# the controller is down, tampering through ctr, graceful restarts with 30
# running, a full disk. ROUNDS rounds per scenario, one scenario at a time,
# against a release steward; each prints its seed and, per scenario, the
# faults injected and time to converge p50/p99. Knobs: ROUNDS (default 100),
# SEED (replays a run), CONVERGE_SECS (bound, default 20), IGNORED=1 also
# runs the scenarios marked #[ignore] (known defects), ONLY=NAME runs the
# scenarios whose test name contains NAME. Then, unless ONLY is given, the
# durability proofs at length: ROUNDS SIGKILL cycles (cli/tests/crash.rs)
# and 2 x ROUNDS simulated power cuts (cli/tests/power_cut.rs).
ROUNDS ?= 100
soak: deps
	$(CARGO) build --release -p steward
	$(CARGO) build -p steward-e2e -p steward --tests
	@echo "soak: $(ROUNDS) rounds per scenario; full log in target/soak.log"
	@STEWARD_BIN=$(CURDIR)/target/release/steward STEWARD_FAULT_ROUNDS=$(ROUNDS) \
	$(if $(SEED),STEWARD_FAULT_SEED=$(SEED)) $(if $(CONVERGE_SECS),STEWARD_FAULT_CONVERGE_SECS=$(CONVERGE_SECS)) \
		$(CARGO) test -p steward-e2e --test fault -- --test-threads=1 --nocapture $(if $(IGNORED),--include-ignored) $(ONLY) \
		> target/soak.log 2>&1; rc=$$?; \
	grep -E '^fault\[.*(seed .* rounds|containerd down)|^test .*\.\.\. |not converged|^  - ' target/soak.log; \
	if [ -z "$(ONLY)" ]; then \
		STEWARD_CRASH_CYCLES=$(ROUNDS) STEWARD_POWERCUT_CUTS=$$(( $(ROUNDS) * 2 )) \
			$(CARGO) test -p steward --test crash --test power_cut -- --nocapture >> target/soak.log 2>&1 || rc=1; \
		grep -E '^power cut:|SIGKILL cycles|^test .*\.\.\. ' target/soak.log | tail -4; \
	fi; exit $$rc

# etcd 3.4 (Debian package etcd-server), the reference bench-store compares with.
deps-bench:
	@command -v etcd >/dev/null || { $(APT_GET) update && $(APT_GET) install -y etcd-server; }

# Store benchmark: durable creates/s (1 and 64 clients) against etcd 3.4,
# unchanged apply, watch latency with 100 watchers, list and RSS at 10,000
# objects. Prints a markdown table; under a minute. Knobs: BENCH_SECS,
# BENCH_CLIENTS, BENCH_WATCHERS, BENCH_WATCH_RATE, BENCH_OBJECTS, BENCH_TMPDIR.
bench-store: deps deps-bench
	$(CARGO) build --release -p steward
	$(CARGO) run --release -p steward --example bench_store

# Reconciler benchmark on one containerd (steward's supervised one): 50
# sleepers by `ctr run` (the floor) vs one `steward apply` until all Running,
# deletes of both, steward's idle CPU and RSS with the 50 running, and podman
# when installed. Prints a markdown table; about 2 minutes. Knobs: BENCH_N,
# BENCH_IDLE_SECS, BENCH_STEWARD_LOG (with RUST_LOG=steward_controller=debug).
bench-reconcile: deps
	$(CARGO) build --release -p steward
	STEWARD_BIN=$(CURDIR)/target/release/steward $(CARGO) run --release -p steward-e2e --example bench_reconcile

# Regenerates manifests/schema/container.json from the code.
schema:
	STEWARD_UPDATE_SCHEMA=1 $(CARGO) test -p steward-schema --test json_schema

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
