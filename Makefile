# memvirt - plain Makefile. `make help` lists the targets; V=1 shows the commands.

PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
BINDIR  ?= $(PREFIX)/bin
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
DESTDIR ?=
CC      ?= cc
WERROR  ?= 1
B       := build

VERSION := $(shell sed -n 's/^\#define MV_VERSION_STRING "\(.*\)"/\1/p' include/memvirt/memvirt.h)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))
SONAME  := libmemvirt.so.$(MAJOR)

DEBS     := liburcu-dev libxxhash-dev libnuma-dev libcmocka-dev libjson-c-dev libinih-dev gnuplot-nox \
            user-mode-linux busybox-static pkg-config g++ abigail-tools qemu-system-x86 \
            libmicrohttpd-dev python3-prometheus-client
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
            -fdiagnostics-show-option -fmessage-length=0
ifeq ($(WERROR),1)
WARN     += -Werror
endif
CFLAGS   ?= -O2 -g
BASEFLAGS := -std=gnu11 -pthread -D_GNU_SOURCE -Iinclude -Ilibmemvirt -Ilibmemvirt/balloon -Iksm-scanner -Ipolicy -Iballoon-driver -Isim \
            -Iguests/uml -Ibench -Itools -Idaemon $(WARN)
LIBFLAGS := $(BASEFLAGS) -fPIC -fvisibility=hidden
# xxHash is compiled in (ksm-scanner/hash.c): only its header is needed.
LDLIBS_LIB := -lurcu-bp -lurcu-cds -lnuma -ljson-c -linih -lm -pthread
# The daemon (daemon/, `memvirt daemon`): its /metrics endpoint.
LDLIBS_DAEMON := -lmicrohttpd
# The page hash is also built for AVX2, chosen at run time (ksm-scanner/hash.c).
ifneq ($(filter x86_64%,$(shell $(CC) -dumpmachine)),)
AVX2FLAGS := -mavx2
endif
SAN      ?=
ifeq ($(SAN),asan)
CFLAGS   += -fsanitize=address,undefined -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=address,undefined
B        := build/asan
endif
ifeq ($(SAN),tsan)
CFLAGS   += -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=thread
B        := build/tsan
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

LIB_SRC   := $(wildcard libmemvirt/*.c libmemvirt/balloon/*.c ksm-scanner/*.c policy/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(B)/obj/%.o)
# The guest driver: freestanding core, plus the hosted port (a simulated guest in-process)
# and the simulated guests' workloads (sim/).
DRV_SRC   := $(wildcard balloon-driver/*.c)
DRV_OBJ   := $(DRV_SRC:%.c=$(B)/obj/%.o)
HOSTED_SRC := $(wildcard balloon-driver/hosted/*.c sim/*.c)
GUEST_OBJ := $(DRV_OBJ) $(HOSTED_SRC:%.c=$(B)/obj/%.o)
FREESTANDING := -std=gnu11 -ffreestanding -fno-builtin -nostdinc -isystem $(shell $(CC) -print-file-name=include) \
            -fno-stack-protector -fPIC $(WARN)
# The bare-metal guest (balloon-driver/pvh/): the driver core and the hosted port's page
# allocator as real x86-64 guest code, a PVH ELF image. Its own flags: no user CFLAGS
# (sanitizers), no libc; lib.c has mem* (loops the compiler must not turn into calls).
PVH_SRC   := $(DRV_SRC) balloon-driver/hosted/galloc.c $(wildcard balloon-driver/pvh/*.c) balloon-driver/pvh/entry.S
PVH_OBJ   := $(patsubst %,$(B)/guest/obj/%.o,$(basename $(PVH_SRC)))
PVH_FLAGS := -std=gnu11 -O2 -g -ffreestanding -fno-builtin -nostdinc -isystem $(shell $(CC) -print-file-name=include) \
            -Iballoon-driver/pvh/include -fno-stack-protector -fno-pic -fno-pie -mno-red-zone -mcmodel=small -mgeneral-regs-only \
            -fno-tree-loop-distribute-patterns -fno-asynchronous-unwind-tables $(WARN)
GUEST     := $(B)/guest/memvirt-guest.elf
# Real guests (guests/): the UML launcher, linked by the CLI and by every test, and the
# guests' root directory (busybox, init, memtool, virtio_balloon.ko), one for all builds.
UML_SRC   := guests/uml/uml.c
UML_OBJ   := $(UML_SRC:%.c=$(B)/obj/%.o)
UML_ROOT  := build/uml-root
UML_TOOL  := build/uml/memtool
UML_DEFS  := -DMV_UML_ROOT_DEFAULT='"$(CURDIR)/$(UML_ROOT)"'
# The host daemon (daemon/) is part of the CLI: `memvirt daemon`.
DAEMON_SRC := $(wildcard daemon/*.c)
TOOL_SRC  := $(wildcard tools/*.c bench/*.c) $(UML_SRC) $(DAEMON_SRC)
TOOL_OBJ  := $(TOOL_SRC:%.c=$(B)/obj/%.o)
TEST_SRC  := $(wildcard tests/*/test_*.c)
TEST_BIN  := $(patsubst tests/%.c,$(B)/tests/%,$(TEST_SRC))
TEST_HELP := $(wildcard tests/common/*.c)
# Tests that are shell scripts (tests/*/test_*.sh) run through a wrapper in the build tree
# that tells them where the sources and the build are.
TEST_SH   := $(wildcard tests/*/test_*.sh)
TEST_SH_BIN := $(patsubst tests/%.sh,$(B)/tests/%,$(TEST_SH))
# The soak (`make soak`): its core is linked by the soak binary and by its smoke test.
SOAK_TIME ?= 1800
SOAK_SEED ?= 1
SOAK_SRC  := $(filter-out tests/soak/main.c tests/soak/test_%.c,$(wildcard tests/soak/*.c))
SOAK_OBJ  := $(SOAK_SRC:%.c=$(B)/obj/%.o)

.PHONY: all deps test soak run install uninstall clean help asan tsan check-exports headers check-freestanding \
        check-abi abi-baseline vmm
all: $(B)/libmemvirt.so $(B)/libmemvirt.a $(B)/libmvguest.a $(B)/memvirt.pc $(B)/memvirt

help:
	@echo "make            build library (.so, .a), memvirt.pc and the memvirt CLI into build/"
	@echo "make deps       install missing Debian packages: $(DEBS)"
	@echo "make test       build and run every test (TEST=name runs one binary)"
	@echo "make soak       everything at once, every page verified, SOAK_TIME s (default 1800), SOAK_SEED=1"
	@echo "make run        build and run the main job: memvirt density (table, build/density/*.csv, .png)"
	@echo "make install    install into DESTDIR/PREFIX (default /usr/local)"
	@echo "make vmm        the reference VMM (build/memvirt-vmm) and the bare-metal guest (build/guest/memvirt-guest.elf)"
	@echo "make check-abi  compare the public ABI of build/libmemvirt.so with tests/abi/libmemvirt.abi"
	@echo "make abi-baseline  accept the current public ABI as the baseline (after a version bump)"
	@echo "make asan|tsan  build and test with ASan+UBSan / TSan (into build/asan, build/tsan)"
	@echo "make fuzz       fuzz the balloon device as a hostile guest, its vhost-user backend as a hostile"
	@echo "                frontend and the agent protocol's decoder (clang; FUZZ_TIME=180 s shared,"
	@echo "                FUZZ_TARGET=balloon|vhost_user|attach|control); memvirtd's control commands"
	@echo "options: V=1 (show commands), WERROR=0, CFLAGS=..., PREFIX=..., DESTDIR=..., SYSTEMDDIR=..."

deps:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then echo "  DEPS  installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
		else echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(LIBFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

# No libc in the guest driver's core: only the compiler's own headers.
$(DRV_OBJ): $(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $< (freestanding)"
	$(Q)$(CC) $(FREESTANDING) $(CFLAGS) -MMD -MP -c $< -o $@

# The guests' programs are static: the root holds no libraries.
$(UML_TOOL): guests/uml/memtool.c
	@mkdir -p $(dir $@)
	@echo "  CC    $< (static)"
	$(Q)$(CC) -static -O2 $(WARN) -o $@ $<

# Without busybox or the UML modules the root is not built; the guests' tests then skip.
$(UML_ROOT)/.built: guests/uml/mkroot.sh guests/uml/init $(UML_TOOL)
	@echo "  ROOT  $(UML_ROOT)"
	$(Q)guests/uml/mkroot.sh $(UML_ROOT) $(UML_TOOL) && touch $@ || echo "  SKIP  $(UML_ROOT) not built"

$(UML_OBJ): LIBFLAGS += $(UML_DEFS)

$(B)/obj/ksm-scanner/hash_avx2.o: LIBFLAGS += $(AVX2FLAGS)
# Hashing reads guest pages that guests write at any time, by design (the scanner's
# compare decides, ordered by userfaultfd, which TSan cannot see): not instrumented.
ifeq ($(SAN),tsan)
$(B)/obj/ksm-scanner/hash.o $(B)/obj/ksm-scanner/hash_avx2.o: CFLAGS := $(filter-out -fsanitize=thread,$(CFLAGS))
endif

$(B)/guest/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $< (guest)"
	$(Q)$(CC) $(PVH_FLAGS) -MMD -MP -c $< -o $@

$(B)/guest/obj/%.o: %.S
	@mkdir -p $(dir $@)
	@echo "  AS    $< (guest)"
	$(Q)$(CC) $(PVH_FLAGS) -c $< -o $@

$(PVH_OBJ): Makefile

$(GUEST): $(PVH_OBJ) balloon-driver/pvh/pvh.ld
	@echo "  LD    $@"
	$(Q)$(CC) -nostdlib -static -no-pie -Wl,-T,balloon-driver/pvh/pvh.ld -Wl,--build-id=none -Wl,--no-warn-rwx-segments -o $@ $(PVH_OBJ)

$(B)/libmvguest.a: $(GUEST_OBJ)
	@echo "  AR    $@"
	$(Q)rm -f $@ && ar rcs $@ $(GUEST_OBJ)

$(B)/libmemvirt.so: $(LIB_OBJ)
	@echo "  LD    $@"
	$(Q)$(CC) -shared -Wl,-soname,$(SONAME) $(LDFLAGS) -o $@.$(VERSION) $(LIB_OBJ) $(LDLIBS_LIB)
	$(Q)ln -sf libmemvirt.so.$(VERSION) $(B)/$(SONAME)
	$(Q)ln -sf libmemvirt.so.$(VERSION) $@

$(B)/libmemvirt.a: $(LIB_OBJ)
	@echo "  AR    $@"
	$(Q)rm -f $@ && ar rcs $@ $(LIB_OBJ)

$(B)/memvirt.pc: memvirt.pc.in include/memvirt/memvirt.h
	@echo "  GEN   $@"
	$(Q)mkdir -p $(B) && sed -e 's|@PREFIX@|$(PREFIX)|;s|@LIBDIR@|$(LIBDIR)|;s|@INCDIR@|$(INCDIR)|;s|@VERSION@|$(VERSION)|' $< > $@

# The CLI links the static library: bench code uses internal symbols for its figures.
$(B)/memvirt: $(TOOL_OBJ) $(B)/libmemvirt.a $(B)/libmvguest.a | $(UML_ROOT)/.built
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(TOOL_OBJ) $(B)/libmvguest.a $(B)/libmemvirt.a $(LDLIBS_LIB) $(LDLIBS_DAEMON) -lm

$(B)/tests/%: tests/%.c $(TEST_HELP) $(UML_OBJ) $(B)/libmemvirt.a $(B)/libmvguest.a | $(UML_ROOT)/.built
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(BASEFLAGS) $(UML_DEFS) $(TEST_DEFS) -Itests/common -Ibench $(CFLAGS) $(LDFLAGS) -o $@ $< $(TEST_HELP) $(TEST_EXTRA) $(UML_OBJ) $(B)/libmvguest.a $(B)/libmemvirt.a $(LDLIBS_LIB) $(TEST_LIBS) -lcmocka -lm

$(TEST_SH_BIN): $(B)/tests/%: tests/%.sh
	@mkdir -p $(dir $@)
	@echo "  GEN   $@"
	$(Q)printf '#!/bin/sh\nMV_SRC=%s MV_B=%s MV_SAN=%s exec sh %s "$$@"\n' '$(CURDIR)' '$(B)' '$(SAN)' '$(CURDIR)/$<' > $@ && chmod +x $@

# The install-and-link test installs from the build tree: the library and CLI first.
$(B)/tests/install/test_install: all

# The reference VMM links the installed library the documented way: installed into
# $(B)/stage, then built by vmm/Makefile with pkg-config only.
VMM := $(B)/memvirt-vmm
$(VMM): $(wildcard vmm/*.c vmm/*.h) vmm/Makefile $(B)/libmemvirt.so $(B)/libmemvirt.a $(B)/memvirt $(wildcard include/memvirt/*.h)
	@echo "  INST  $(B)/stage"
	$(Q)$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/$(B)/stage >/dev/null
	@echo "  LD    $@ (pkg-config memvirt from $(B)/stage)"
	$(Q)PKG_CONFIG_PATH=$(CURDIR)/$(B)/stage/lib/pkgconfig $(MAKE) --no-print-directory -s -C vmm O=$(CURDIR)/$(B) CC=$(CC)
vmm: $(VMM) $(GUEST)
# The tests that boot the guest (skipped in sanitizer builds: the VMM links the plain library).
ifeq ($(SAN),)
GUEST_TESTS := $(VMM) $(GUEST)
endif

# Tests of the CLI's own parts link the objects they test.
$(B)/tests/tools/test_ksmctl $(B)/tests/tools/test_journal: TEST_EXTRA := $(B)/obj/bench/ksmctl.o $(B)/obj/bench/journal.o
$(B)/tests/tools/test_ksmctl $(B)/tests/tools/test_journal: $(B)/obj/bench/ksmctl.o $(B)/obj/bench/journal.o
# test_journal also runs `memvirt restore`.
$(B)/tests/tools/test_journal: $(B)/memvirt

# Linux's balloon driver against the vhost-user server of `memvirt balloon-backend`.
$(B)/tests/guests/test_linux_balloon: TEST_EXTRA := $(B)/obj/tools/vu_serve.o $(B)/obj/bench/args.o
$(B)/tests/guests/test_linux_balloon: $(B)/obj/tools/vu_serve.o $(B)/obj/bench/args.o
# memvirt's own driver against the same server, through the hosted port's vhost-user bridge.
$(B)/tests/balloon-driver/test_driver_vhost_user: TEST_EXTRA := $(B)/obj/tools/vu_serve.o $(B)/obj/bench/args.o
$(B)/tests/balloon-driver/test_driver_vhost_user: $(B)/obj/tools/vu_serve.o $(B)/obj/bench/args.o

# The vhost-user tests share their fake frontend.
$(B)/tests/libmemvirt/test_vhost_user $(B)/tests/libmemvirt/test_vhost_user_hostile $(B)/tests/libmemvirt/test_vhost_user_threads: tests/libmemvirt/vufront.h

# The daemon's tests link the objects they test and libmicrohttpd; test_metrics runs
# tests/daemon/promcheck.py (prometheus_client's parser) from the source tree.
$(B)/tests/daemon/test_metrics: TEST_EXTRA := $(B)/obj/daemon/metrics.o
$(B)/tests/daemon/test_metrics: $(B)/obj/daemon/metrics.o tests/daemon/promcheck.py
$(B)/tests/daemon/%: TEST_LIBS := $(LDLIBS_DAEMON)
# test_daemon runs the daemon and the admin's commands: the CLI.
$(B)/tests/daemon/test_daemon: $(B)/memvirt
# test_density_uml runs `memvirt density --guests uml`: the CLI.
$(B)/tests/tools/test_density_uml: $(B)/memvirt
$(B)/tests/daemon/%: TEST_DEFS := -DMV_SRC_DIR='"$(CURDIR)"'

# The soak's smoke test runs its loop for 10 s.
$(B)/tests/soak/test_soak_smoke: TEST_EXTRA := $(SOAK_OBJ)
$(B)/tests/soak/test_soak_smoke: $(SOAK_OBJ)

$(B)/tests-soak/soak: tests/soak/main.c $(SOAK_OBJ) $(B)/libmemvirt.a $(B)/libmvguest.a
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(BASEFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $< $(SOAK_OBJ) $(B)/libmvguest.a $(B)/libmemvirt.a $(LDLIBS_LIB) -lm

check-exports: $(B)/libmemvirt.so
	@bad=$$(nm -D --defined-only $(B)/libmemvirt.so | awk '$$2 ~ /[TDBRW]/ {print $$3}' | grep -v '^mv_' | grep -vE '^(_init|_fini|_edata|_end|__bss_start)$$'); \
	if [ -n "$$bad" ]; then echo "exported names without mv_ prefix: $$bad"; exit 1; fi; echo "  OK    exports are mv_ only"

# The driver core may only need what a compiler may emit calls to on its own.
check-freestanding: $(DRV_OBJ)
	$(Q)ld -r -o $(B)/obj/balloon-driver.o $(DRV_OBJ)
	@bad=$$(nm -u $(B)/obj/balloon-driver.o | awk 'NF == 2 {print $$2}' | sort -u | grep -vE '^(memcpy|memset|memmove|memcmp)$$'); \
	if [ -n "$$bad" ]; then echo "balloon-driver core needs libc symbols: $$bad"; exit 1; fi; echo "  OK    balloon-driver core is freestanding"

# The public ABI against the baseline in the tree (also run by `make test`).
check-abi: $(B)/libmemvirt.so
	$(Q)MV_SRC=$(CURDIR) MV_B=$(B) MV_SAN=$(SAN) sh tests/abi/test_abi.sh

# Accept the ABI of the library just built as the new baseline: after a deliberate change
# of the public API, with MV_VERSION_MINOR (additions) or MV_VERSION_MAJOR raised.
abi-baseline: $(B)/libmemvirt.so
	$(Q)sh tests/abi/abidw.sh $(CURDIR) $(B)/libmemvirt.so > tests/abi/libmemvirt.abi.tmp
	$(Q)mv tests/abi/libmemvirt.abi.tmp tests/abi/libmemvirt.abi
	@echo "  ABI   tests/abi/libmemvirt.abi now records $$(grep -c '<elf-symbol ' tests/abi/libmemvirt.abi) exported symbols of $(SONAME) $(VERSION)"

headers:
	@for h in include/memvirt/*.h; do \
		echo "#include <memvirt/$$(basename $$h)>" | $(CC) -std=c11 -Iinclude -Wall -Werror -x c -c -o /dev/null - || exit 1; \
		echo "#include <memvirt/$$(basename $$h)>" | g++ -Iinclude -Wall -Werror -x c++ -c -o /dev/null - || exit 1; \
	done; echo "  OK    public headers compile alone, as C and C++"

test: deps
	$(Q)$(MAKE) --no-print-directory all $(TEST_BIN) $(TEST_SH_BIN) $(GUEST_TESTS)
	$(Q)$(MAKE) --no-print-directory check-exports $(if $(SAN),,check-freestanding) headers
	$(Q)tests/run-tests $(B)/tests $(TEST)

soak: deps
	$(Q)$(MAKE) --no-print-directory all $(B)/tests-soak/soak
	$(Q)SOAK_TIME=$(SOAK_TIME) SOAK_SEED=$(SOAK_SEED) $(B)/tests-soak/soak

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(B)/memvirt density --out $(B)/density

asan:
	$(Q)$(MAKE) --no-print-directory SAN=asan test
tsan:
	$(Q)TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp $(TSAN_OPTIONS)" $(MAKE) --no-print-directory SAN=tsan test

install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/memvirt $(DESTDIR)$(BINDIR)
	install -m 644 include/memvirt/*.h $(DESTDIR)$(INCDIR)/memvirt/
	install -m 755 $(B)/libmemvirt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/
	ln -sf libmemvirt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf libmemvirt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libmemvirt.so
	install -m 644 $(B)/libmemvirt.a $(DESTDIR)$(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|;s|@LIBDIR@|$(LIBDIR)|;s|@INCDIR@|$(INCDIR)|;s|@VERSION@|$(VERSION)|' \
		memvirt.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/memvirt.pc
	install -m 755 $(B)/memvirt $(DESTDIR)$(BINDIR)/
	install -d $(DESTDIR)$(SYSTEMDDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' daemon/memvirtd.service > $(DESTDIR)$(SYSTEMDDIR)/memvirtd.service
	chmod 644 $(DESTDIR)$(SYSTEMDDIR)/memvirtd.service

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libmemvirt.* $(DESTDIR)$(LIBDIR)/pkgconfig/memvirt.pc $(DESTDIR)$(BINDIR)/memvirt
	rm -f $(DESTDIR)$(SYSTEMDDIR)/memvirtd.service
	rm -rf $(DESTDIR)$(INCDIR)/memvirt

clean:
	rm -rf build

include tests/fuzz/fuzz.mk

-include $(shell find $(B)/obj $(B)/guest/obj -name '*.d' 2>/dev/null)
