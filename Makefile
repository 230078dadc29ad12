# steward: `make run` sets up and starts steward; `make test` runs every test.
# Both install what is missing on a fresh Debian machine (as root).

CARGO     ?= cargo
DATA_DIR  ?= $(CURDIR)/data
LISTEN    ?= 127.0.0.1:7420
APT_GET   := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test deps build release schema fmt lint clean bench-store deps-bench

# Build-time needs: a C compiler for SQLite (bundled by sqlx) and the Rust
# toolchain the machine ships. Tests need no other service yet.
deps:
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@command -v cc >/dev/null || { $(APT_GET) update && $(APT_GET) install -y gcc; }

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release -p steward

# Starts steward in the foreground on $(LISTEN) with its state in $(DATA_DIR).
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
