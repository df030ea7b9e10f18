# fuzz.mk - `make fuzz`: the virtio-balloon device under libFuzzer, playing a hostile guest
# (tests/fuzz/fuzz_balloon.c). Included by the Makefile, after LIB_SRC and LDLIBS_LIB.
#
#   make fuzz                    build, then fuzz for FUZZ_TIME seconds (default 180)
#   make fuzz FUZZ_TIME=600 FUZZ_ARGS="-jobs=1 -workers=1"
#
# The library and the harness are built with clang -fsanitize=fuzzer,address,undefined into
# build/fuzz/. The tracked seeds (tests/fuzz/corpus) are copied to build/fuzz/corpus, where
# the fuzzer keeps what it finds; crashes land in build/fuzz/artifacts/. Every crash becomes
# a named file in tests/fuzz/regressions/, replayed by `make test`
# (tests/fuzz/test_fuzz_regressions.c, built with the normal compiler, no libFuzzer).

FUZZ_TIME  ?= 180
FUZZ_ARGS  ?=
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

$(FUZZ_B)/fuzz_balloon: tests/fuzz/fuzz_balloon.c $(FUZZ_OBJ)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SAN) -o $@ $< $(FUZZ_OBJ) $(LDLIBS_LIB)

fuzz-build: fuzz-deps
	$(Q)$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) $(FUZZ_B)/fuzz_balloon

fuzz: fuzz-build
	$(Q)mkdir -p $(FUZZ_B)/corpus $(FUZZ_B)/artifacts
	$(Q)cp tests/fuzz/corpus/* $(FUZZ_B)/corpus/
	$(Q)$(FUZZ_B)/fuzz_balloon -max_total_time=$(FUZZ_TIME) -artifact_prefix=$(FUZZ_B)/artifacts/ \
		-print_final_stats=1 $(FUZZ_ARGS) $(FUZZ_B)/corpus

-include $(wildcard $(FUZZ_B)/obj/*/*.d)

# The test binaries include these sources: rebuild them when they change.
$(B)/tests/fuzz/test_fuzz_regressions: tests/fuzz/fuzz_balloon.c
$(patsubst tests/%.c,$(B)/tests/%,$(wildcard tests/conformance/test_*.c)): $(wildcard tests/conformance/*.h)
