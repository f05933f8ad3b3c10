# qsnapd build, test and benchmark entry points. Targets install what they
# need: Debian packages through apt-get, Go modules through the proxy.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/qsnapd/qsnapd/internal/version.Version=$(VERSION)
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: QEMU and its image tools; mkfs.ext4,
# busybox, qemu-ga and xz for the test guest; virt-xml-validate (with
# xmllint) to check snapshot XML against libvirt's schema; prometheus and
# promtool; a private dbus-daemon with busctl and dbus-send; systemd's
# systemd-analyze; setpriv and curl to call the API as another user.
DEB_PKGS := qemu-system-x86 qemu-utils e2fsprogs busybox-static qemu-guest-agent xz-utils libvirt-clients libxml2-utils \
            prometheus dbus-daemon dbus-bin systemd util-linux curl
FUZZTIME ?= 60s
BENCHCOUNT ?= 6

.PHONY: all build deps test test-short bench fuzz fmt vet lint clean demo install

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/qsnapd ./cmd/qsnapd
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/qsnapctl ./cmd/qsnapctl

# deps installs only what is missing, so it is cheap to run every time.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(GO) mod download

# demo boots the test guest, runs qsnapd on temporary sockets and takes a
# quiesced atomic snapshot through qsnapctl; it cleans up after itself.
demo: deps build
	bash scripts/demo.sh

vet:
	$(GO) vet ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-clean:"; echo "$$out"; exit 1; fi

# lint runs golangci-lint, pinned as a Go tool in go.mod, with .golangci.yml.
lint:
	$(GO) tool golangci-lint run ./...

test: deps fmt vet lint
	$(GO) test -race -count=1 -timeout 25m ./...

test-short:
	$(GO) test -short -race -count=1 ./...

# bench runs every benchmark against real QEMU (and a real guest for the
# freeze window), BENCHCOUNT times, into bench.out. Each reports medians.
# Those that grow chains (quiesce, snapshot depth) run a fixed number of
# iterations: each iteration adds a layer to every disk.
bench: deps
	$(GO) test -timeout 60m -run '^$$' -bench . -skip 'BenchmarkQuiesce|BenchmarkSnapshotDepth|BenchmarkDelete/merge' -benchtime 2s -count $(BENCHCOUNT) ./... | tee bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkQuiesce' -benchtime 24x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkSnapshotDepth' -benchtime 48x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkDelete/merge' -benchtime 1x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out

fuzz:
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDecodeLine$$' -fuzztime $(FUZZTIME) ./qmp/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./qmp/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDecodeCreateRequest$$' -fuzztime $(FUZZTIME) ./api/server/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDiskspec$$' -fuzztime $(FUZZTIME) ./cmd/qsnapctl/

# install puts the binaries, units, example config, alert rules and bus
# policy where Debian expects them; DESTDIR stages a package.
PREFIX     ?= /usr
SYSCONFDIR ?= /etc
UNITDIR    ?= /lib/systemd/system
install: build
	install -D -m 0755 bin/qsnapd $(DESTDIR)$(PREFIX)/bin/qsnapd
	install -D -m 0755 bin/qsnapctl $(DESTDIR)$(PREFIX)/bin/qsnapctl
	install -D -m 0644 configs/qsnapd.service $(DESTDIR)$(UNITDIR)/qsnapd.service
	install -D -m 0644 configs/qsnapd.socket $(DESTDIR)$(UNITDIR)/qsnapd.socket
	sed -i 's|/usr/bin/qsnapd|$(PREFIX)/bin/qsnapd|' $(DESTDIR)$(UNITDIR)/qsnapd.service
	install -D -m 0644 configs/io.github.qsnapd.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/io.github.qsnapd.conf
	install -D -m 0644 configs/qsnapd-alerts.yml $(DESTDIR)$(PREFIX)/share/qsnapd/qsnapd-alerts.yml
	install -D -m 0644 configs/qsnapd.toml $(DESTDIR)$(PREFIX)/share/doc/qsnapd/examples/qsnapd.toml
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/qsnapd/README.md
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/qsnapd/qsnapd.toml ]; then \
		install -D -m 0640 configs/qsnapd.toml $(DESTDIR)$(SYSCONFDIR)/qsnapd/qsnapd.toml; \
	fi

clean:
	rm -rf bin bench.out

# guest builds the kernel and initramfs of internal/testing/testguest, or finds
# them in its cache (QSNAPD_GUEST_CACHE, default /var/cache/qsnapd-testguest).
.PHONY: guest
guest:
	bash internal/testing/testguest/build.sh
