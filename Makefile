# qsnapd build, test and benchmark entry points. Targets install what they
# need: Debian packages through apt-get, Go modules through the proxy.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/qsnapd/qsnapd/internal/version.Version=$(VERSION)
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: QEMU and its image tools; mkfs.ext4,
# busybox, qemu-ga and xz for the test guest; virt-xml-validate (with
# xmllint) to check snapshot XML against libvirt's schema, and virsh and
# libvirt-python as stock clients of the libvirt socket; prometheus and
# promtool; a private dbus-daemon with busctl and dbus-send; systemd's
# systemd-analyze; setpriv and curl to call the API as another user.
DEB_PKGS := qemu-system-x86 qemu-utils e2fsprogs busybox-static qemu-guest-agent xz-utils libvirt-clients libxml2-utils \
            python3-libvirt prometheus dbus-daemon dbus-bin systemd util-linux curl
FUZZTIME ?= 60s
BENCHCOUNT ?= 6

.PHONY: all build deps test test-short bench bench-libvirt bench-endpoint golden-libvirt soak fuzz fmt vet lint clean demo install man deb

all: build

# The binaries are static (no cgo) and stripped of their symbol tables;
# Go's own tables keep panics' stack traces readable.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o bin/qsnapd ./cmd/qsnapd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o bin/qsnapctl ./cmd/qsnapctl

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
# Those that grow chains (quiesce, quiesce scope, snapshot depth) run a
# fixed number of iterations: each iteration adds a layer to every disk
# it snapshots. The metadata's (no QEMU) sets up 10 000 snapshots once
# per process, then runs a fixed number of rounds of its reads.
bench: deps
	$(GO) test -timeout 60m -run '^$$' -bench . -skip 'BenchmarkQuiesce|BenchmarkSnapshotDepth|BenchmarkDelete/merge|BenchmarkMetadata' -benchtime 2s -count $(BENCHCOUNT) ./... | tee bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkMetadata' -benchtime 4x -count $(BENCHCOUNT) ./api/server/ | tee -a bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkQuiesce$$|BenchmarkQuiesceScope$$' -benchtime 24x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkSnapshotDepth' -benchtime 48x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out
	$(GO) test -timeout 60m -run '^$$' -bench 'BenchmarkDelete/merge' -benchtime 1x -count $(BENCHCOUNT) ./driver/ | tee -a bench.out

# bench-libvirt times qsnapd against libvirt side by side (issue 13):
# each case on a fresh VM per side, the same settings on both (the test
# guest with qemu-ga and 2 ext4 disks for the quiesced case, paused VMs
# with 8 and 24 disks for the unquiesced ones), RUNS (default 10)
# interleaved snapshots per side, virsh against qsnapctl; it prints the
# medians, the ratios and the issue's targets, also into
# bench-libvirt.out. As root: it uses libvirt's system instance, and
# starts libvirtd (and virtlogd) by hand when nothing serves it, stopping
# them again at the end. CASES=quiesced,8,24 picks cases. Not part of
# make test.
BENCH_LIBVIRT_PKGS := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-guest-agent \
                      e2fsprogs busybox-static xz-utils
RUNS ?= 10
bench-libvirt: build
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(BENCH_LIBVIRT_PKGS)"
	RUNS=$(RUNS) QSNAPD_BIN=$(CURDIR)/bin BENCH_LIBVIRT_OUT=$(CURDIR)/bench-libvirt.out \
		$(GO) test -tags benchlibvirt -run '^TestBenchLibvirt$$' -count=1 -v -timeout 70m ./internal/testing/benchlibvirt/

# golden-libvirt records what real libvirtd does with the virsh scenario
# of internal/testing/virshscript (snapshots on a paused 2-disk VM, and
# the errors) into its testdata/libvirtd-9.0.golden, the reference our own
# endpoint is compared with. As root, like bench-libvirt: it starts
# libvirtd and virtlogd by hand when nothing serves libvirt's system
# instance, and stops them and destroys the domain at the end.
GOLDEN_LIBVIRT_PKGS := libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
golden-libvirt:
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(GOLDEN_LIBVIRT_PKGS)"
	GOLDEN_WRITE=1 $(GO) test -tags benchlibvirt -run '^TestGoldenTranscripts$$' -count=1 -v -timeout 20m ./internal/testing/benchlibvirt/

# bench-endpoint times snapshot-create-as --disk-only --atomic
# --no-metadata three ways in one run (issue 14): the stock virsh through
# qsnapd's libvirt endpoint, qsnapctl through its API, and virsh through
# libvirtd, for 1 and 8 disks of paused VMs; RUNS (default 10) rounds,
# the order rotating. It prints medians and ratios, also into
# bench-endpoint.out. As root, as bench-libvirt. Not part of make test.
bench-endpoint: build
	@$(MAKE) --no-print-directory deps DEB_PKGS="$(BENCH_LIBVIRT_PKGS)"
	RUNS=$(RUNS) QSNAPD_BIN=$(CURDIR)/bin BENCH_LIBVIRT_OUT=$(CURDIR)/bench-endpoint.out \
		$(GO) test -tags benchlibvirt -run '^TestBenchEndpoint$$' -count=1 -v -timeout 70m ./internal/testing/benchlibvirt/

# soak loads one daemon with 50 domains of 2 disks, 20 snapshots each,
# all domains at once, 50 API readers and 5 event streams; it prints
# snapshots per second, the daemon's peak RSS, and its goroutines and
# open fds before, under and after the load. SOAK_DOMAINS, SOAK_DISKS,
# SOAK_SNAPSHOTS, SOAK_READERS and SOAK_STREAMS change the load.
soak: deps
	$(GO) test -tags soak -run '^TestSoak$$' -count=1 -v -timeout 30m ./internal/testing/soak/

fuzz:
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDecodeLine$$' -fuzztime $(FUZZTIME) ./qmp/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./qmp/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDecodeCreateRequest$$' -fuzztime $(FUZZTIME) ./api/server/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDiskspec$$' -fuzztime $(FUZZTIME) ./cmd/qsnapctl/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./libvirtrpc/
	$(GO) test -timeout 60m -run '^$$' -fuzz '^FuzzDecodeCall$$' -fuzztime $(FUZZTIME) ./libvirtrpc/

# man writes qsnapd(8) and qsnapctl(1) from the programs' own --help
# and --version, with help2man.
man: build
	mkdir -p build/man
	help2man --no-info --section 8 --source qsnapd \
		--name "live disk-only snapshots of running QEMU guests" ./bin/qsnapd | gzip -9n > build/man/qsnapd.8.gz
	help2man --no-info --section 1 --source qsnapd \
		--name "command line client of qsnapd, the snapshot daemon" ./bin/qsnapctl | gzip -9n > build/man/qsnapctl.1.gz

# install puts the binaries, units, sysusers and tmpfiles files, config,
# man pages, alert rules and bus policy where Debian expects them;
# DESTDIR stages a package (make deb packs exactly this tree). An
# existing /etc/qsnapd/qsnapd.toml is kept. Installed for real (no
# DESTDIR) under systemd, it creates the group and reloads systemd.
PREFIX     ?= /usr
SYSCONFDIR ?= /etc
UNITDIR    ?= /lib/systemd/system
DOCDIR      = $(DESTDIR)$(PREFIX)/share/doc/qsnapd
install: build man
	install -D -m 0755 bin/qsnapd $(DESTDIR)$(PREFIX)/bin/qsnapd
	install -D -m 0755 bin/qsnapctl $(DESTDIR)$(PREFIX)/bin/qsnapctl
	install -D -m 0644 configs/qsnapd.service $(DESTDIR)$(UNITDIR)/qsnapd.service
	install -D -m 0644 configs/qsnapd.socket $(DESTDIR)$(UNITDIR)/qsnapd.socket
	install -D -m 0644 configs/qsnapd-ro.socket $(DESTDIR)$(UNITDIR)/qsnapd-ro.socket
	install -D -m 0644 configs/qsnapd-libvirt.socket $(DESTDIR)$(UNITDIR)/qsnapd-libvirt.socket
	install -D -m 0644 configs/qsnapd-libvirt-ro.socket $(DESTDIR)$(UNITDIR)/qsnapd-libvirt-ro.socket
	sed -i 's|/usr/bin/qsnapd|$(PREFIX)/bin/qsnapd|' $(DESTDIR)$(UNITDIR)/qsnapd.service
	install -D -m 0644 configs/qsnapd.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/qsnapd.conf
	install -D -m 0644 configs/qsnapd.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/qsnapd.conf
	install -D -m 0644 configs/io.github.qsnapd.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/io.github.qsnapd.conf
	install -D -m 0644 configs/qsnapd-alerts.yml $(DESTDIR)$(PREFIX)/share/qsnapd/qsnapd-alerts.yml
	install -D -m 0644 build/man/qsnapd.8.gz $(DESTDIR)$(PREFIX)/share/man/man8/qsnapd.8.gz
	install -D -m 0644 build/man/qsnapctl.1.gz $(DESTDIR)$(PREFIX)/share/man/man1/qsnapctl.1.gz
	install -D -m 0644 README.md $(DOCDIR)/README.md
	install -D -m 0644 packaging/copyright $(DOCDIR)/copyright
	install -D -m 0644 configs/qsnapd.toml $(DOCDIR)/examples/qsnapd.toml
	install -D -m 0644 configs/images.conf $(DOCDIR)/examples/images.conf
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/qsnapd/qsnapd.toml ]; then \
		install -D -m 0644 configs/qsnapd.toml $(DESTDIR)$(SYSCONFDIR)/qsnapd/qsnapd.toml; \
	fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemd-sysusers qsnapd.conf && systemd-tmpfiles --create qsnapd.conf && systemctl daemon-reload; \
	fi

# deb builds qsnapd_<version>_amd64.deb in DEB_DIR with nfpm (a Go tool
# in go.mod) from the tree make install stages. The version is the commit's date
# and hash before the release it leads to ("~" sorts before it).
DEB_DIR     ?= .
DEB_VERSION ?= $(shell git log -1 --date=format:%Y%m%d --format='0.1.0~git%cd.%h' 2>/dev/null || echo 0.1.0)
deb:
	rm -rf build/root
	$(MAKE) install DESTDIR=$(CURDIR)/build/root PREFIX=/usr SYSCONFDIR=/etc
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e "s|@COMMIT@|$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)|" \
		-e "s|@DATE@|$$(date -R -d @$$(git log -1 --format=%ct 2>/dev/null || date +%s))|" packaging/changelog.in \
		| gzip -9n > build/root/usr/share/doc/qsnapd/changelog.gz
	install -D -m 0644 packaging/lintian-overrides build/root/usr/share/lintian/overrides/qsnapd
	DEB_VERSION=$(DEB_VERSION) $(GO) tool nfpm package --config packaging/nfpm.yaml --packager deb --target $(DEB_DIR)

clean:
	rm -rf bin build bench.out bench-libvirt.out bench-endpoint.out qsnapd_*.deb

# guest builds the kernel and initramfs of internal/testing/testguest, or finds
# them in its cache (QSNAPD_GUEST_CACHE, default /var/cache/qsnapd-testguest).
.PHONY: guest
guest:
	bash internal/testing/testguest/build.sh
