# fuzz.mk - `make fuzz`: libFuzzer against the virtio-balloon device, playing a hostile
# guest (tests/fuzz/fuzz_balloon.c), against its vhost-user backend, playing a hostile
# frontend (tests/fuzz/fuzz_vhost_user.c), and against the agent protocol's decoder, fed
# the bytes of a hostile daemon or agent (tests/fuzz/fuzz_attach.c), and against
# memvirtd's control commands (tests/fuzz/fuzz_control.c). Included by the
# Makefile, after LIB_SRC and LDLIBS_LIB.
#
#   make fuzz                    build, then fuzz each harness in turn, FUZZ_TIME seconds
#                                (default 180) shared between them
#   make fuzz FUZZ_TARGET=vhost_user FUZZ_TIME=600 FUZZ_ARGS="-jobs=1 -workers=1"
#
# FUZZ_TARGET names the harnesses to run: balloon, vhost_user, attach, control (default all).
# The library and the harnesses are built with clang -fsanitize=fuzzer,address,undefined
# into build/fuzz/. The tracked seeds (tests/fuzz/corpus, tests/fuzz/corpus-vhost-user,
# tests/fuzz/corpus-attach) are copied to build/fuzz/, where the fuzzer keeps what it
# finds; crashes land in build/fuzz/artifacts/, prefixed with the harness's name. Every
# crash becomes a named file in tests/fuzz/regressions/ (or regressions-vhost-user/,
# regressions-attach/), replayed by `make test` (tests/fuzz/test_fuzz_regressions.c,
# test_fuzz_vhost_user.c, test_fuzz_attach.c: the harnesses built with the normal
# compiler, no libFuzzer).

FUZZ_TIME  ?= 180
FUZZ_ARGS  ?=
FUZZ_TARGET ?= balloon vhost_user attach control
FUZZ_CC    ?= clang
FUZZ_DEBS  := clang libclang-rt-dev
FUZZ_B     := build/fuzz
FUZZ_SAN   := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_FLAGS := $(filter-out -Werror,$(BASEFLAGS)) -Wno-error -g -O1 -fno-omit-frame-pointer
FUZZ_OBJ   := $(LIB_SRC:%.c=$(FUZZ_B)/obj/%.o)

.PHONY: fuzz fuzz-deps fuzz-build

fuzz-deps:
	@missing=""; for p in $(FUZZ_DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then echo "  DEPS  installing:$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
		else echo "missing packages; run: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

$(FUZZ_OBJ): $(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $< (fuzz)"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SAN) -MMD -MP -c $< -o $@

$(FUZZ_B)/obj/ksm-scanner/hash_avx2.o: FUZZ_FLAGS += $(AVX2FLAGS)

$(FUZZ_B)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SAN) -o $@ $< $(FUZZ_OBJ) $(LDLIBS_LIB)

fuzz-build: fuzz-deps
	$(Q)$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) $(FUZZ_TARGET:%=$(FUZZ_B)/fuzz_%)

# Per harness: its seed directory and its own libFuzzer options (the vhost-user programs
# are longer; a dispatch that blocks is a finding, caught by the timeout; a report of
# 64 VMs is 29868 bytes).
fuzz_corpus_balloon    := corpus
fuzz_corpus_vhost_user := corpus-vhost-user
fuzz_args_vhost_user   := -max_len=8192 -timeout=20
fuzz_corpus_attach     := corpus-attach
fuzz_args_attach       := -max_len=32768
fuzz_corpus_control    := corpus-control
fuzz_args_control      := -max_len=4096 -timeout=20

# The control harness runs memvirtd's command core (daemon/, all but main.c and the
# metrics endpoint).
FUZZ_DAEMON_SRC := $(filter-out daemon/main.c daemon/metrics.c,$(wildcard daemon/*.c))
FUZZ_DAEMON_OBJ := $(FUZZ_DAEMON_SRC:%.c=$(FUZZ_B)/obj/%.o)
$(FUZZ_DAEMON_OBJ): $(FUZZ_B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $< (fuzz)"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SAN) -MMD -MP -c $< -o $@
$(FUZZ_B)/fuzz_control: tests/fuzz/fuzz_control.c $(FUZZ_OBJ) $(FUZZ_DAEMON_OBJ)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SAN) -o $@ $< $(FUZZ_DAEMON_OBJ) $(FUZZ_OBJ) $(LDLIBS_LIB)

fuzz: fuzz-build
	$(Q)mkdir -p $(FUZZ_B)/artifacts
	$(Q)n=$(words $(FUZZ_TARGET)); t=$$(( $(FUZZ_TIME) / n )); \
	$(foreach h,$(FUZZ_TARGET),\
		mkdir -p $(FUZZ_B)/$(fuzz_corpus_$(h)) && cp tests/fuzz/$(fuzz_corpus_$(h))/* $(FUZZ_B)/$(fuzz_corpus_$(h))/ && \
		echo "  FUZZ  $(h) for $$t s" && \
		$(FUZZ_B)/fuzz_$(h) -max_total_time=$$t -artifact_prefix=$(FUZZ_B)/artifacts/$(h)- \
			-print_final_stats=1 $(fuzz_args_$(h)) $(FUZZ_ARGS) $(FUZZ_B)/$(fuzz_corpus_$(h)) || exit 1;)

-include $(wildcard $(FUZZ_B)/obj/*/*.d)

# The test binaries include these sources: rebuild them when they change.
$(B)/tests/fuzz/test_fuzz_regressions: tests/fuzz/fuzz_balloon.c tests/fuzz/replay.h
$(B)/tests/fuzz/test_fuzz_vhost_user: tests/fuzz/fuzz_vhost_user.c tests/fuzz/replay.h
$(B)/tests/fuzz/test_fuzz_attach: tests/fuzz/fuzz_attach.c tests/fuzz/replay.h
$(B)/tests/fuzz/test_fuzz_control: tests/fuzz/fuzz_control.c tests/fuzz/replay.h $(FUZZ_DAEMON_SRC:%.c=$(B)/obj/%.o)
$(B)/tests/fuzz/test_fuzz_control: TEST_EXTRA := $(FUZZ_DAEMON_SRC:%.c=$(B)/obj/%.o)
$(patsubst tests/%.c,$(B)/tests/%,$(wildcard tests/conformance/test_*.c)): $(wildcard tests/conformance/*.h)
