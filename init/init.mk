# The static binaries of the toolbox, built from init/*.c; included by the top-level Makefile,
# which defines BUILD. zeropod-init is the keeper, PID 1 of every managed container;
# zeropod-criu is the agent's way into a container for CRIU. Static, so they run in any image
# and on any host: musl-gcc gives catatonit-sized binaries, glibc's gcc -static is the fallback.
INIT_CC ?= $(shell command -v musl-gcc 2>/dev/null || echo gcc)
INIT_CFLAGS := -Wall -Wextra -Werror=format-security -static -Os

$(BUILD)/zeropod-init $(BUILD)/zeropod-criu: $(BUILD)/%: init/%.c init/init.mk
	@mkdir -p $(BUILD)
	$(INIT_CC) $(INIT_CFLAGS) -o $@.tmp $<
	strip $@.tmp
	mv -f $@.tmp $@

# CRIU's prlimit64 shim (init/zeropod-rlimits.c), preloaded into the toolbox's CRIU by its
# ld.so: a shared object for glibc, hence the system's gcc whatever INIT_CC is.
$(BUILD)/libzeropod-rlimits.so: init/zeropod-rlimits.c init/init.mk
	@mkdir -p $(BUILD)
	gcc -Wall -Wextra -O2 -shared -fPIC -o $@.tmp $<
	strip $@.tmp
	mv -f $@.tmp $@

# `make build/zeropod-init` names the same file by a relative path.
ifneq ($(BUILD)/zeropod-init,build/zeropod-init)
build/zeropod-init: $(BUILD)/zeropod-init
build/zeropod-criu: $(BUILD)/zeropod-criu
build/libzeropod-rlimits.so: $(BUILD)/libzeropod-rlimits.so
endif
