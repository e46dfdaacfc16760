# ckpt: build, test, benchmark, install, demo.
#   make               build ckpt (release; build.rs also builds the loader) and the test programs
#   make test          build the test programs, then run every test (release build)
#   make bench         run the benchmark report
#   make install       install ckpt into $(PREFIX)/bin (default /usr/local)
#   make demo          checkpoint, kill and restore a counter, end to end
CARGO ?= cargo
PREFIX ?= /usr/local
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
TESTDATA := $(abspath $(TARGET_DIR))/testdata
CKPT := $(TARGET_DIR)/release/ckpt

.PHONY: all build testdata test bench install demo clean

all: build testdata

build:
	$(CARGO) build --release

testdata:
	$(MAKE) -C testdata OUT=$(TESTDATA)

test: testdata
	$(CARGO) test --release --workspace --no-fail-fast -- --test-threads=2

bench: build
	$(CARGO) run --release --bin ckpt -- bench

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(CKPT) $(DESTDIR)$(PREFIX)/bin/ckpt
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions
	$(CKPT) man $(DESTDIR)$(PREFIX)/share/man/man1
	$(CKPT) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/ckpt

demo: all
	tests/demo.sh $(CKPT) $(TESTDATA)/counter

clean:
	$(CARGO) clean
