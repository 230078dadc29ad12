# steward: `make run` sets up and starts steward; `make test` runs every test.
# Both install what is missing on a fresh Debian machine (as root).

CARGO     ?= cargo
DATA_DIR  ?= $(CURDIR)/data
LISTEN    ?= 127.0.0.1:7420
APT_GET   := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test deps deps-e2e build release schema fmt lint clean bench-store deps-bench

# Debian packages: gcc (SQLite, bundled by sqlx), protoc (containerd's gRPC
# API), containerd and runc (what steward drives), and for the e2e suite a
# local registry, skopeo to push to it, and busybox for the test image.
DEB_PACKAGES := gcc protobuf-compiler containerd runc docker-registry skopeo busybox-static
DEB_PROBES   := cc protoc containerd runc docker-registry skopeo /bin/busybox

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
# supervising its own containerd under $(DATA_DIR)/containerd.
run: release
	./target/release/steward serve --data-dir $(DATA_DIR) --listen $(LISTEN)

# Every test: unit, API integration, CLI against the real binary, and the
# crash-durability test (SIGKILL under load, 20+ cycles).
test: deps
	$(CARGO) build --workspace --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

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

# Regenerates manifests/schema/container.json from the code.
schema:
	STEWARD_UPDATE_SCHEMA=1 $(CARGO) test -p steward-schema --test json_schema

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
