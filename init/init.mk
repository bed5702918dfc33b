# The keeper (zeropod-init), PID 1 of every managed container; included by the
# top-level Makefile, which defines BUILD. Static, so it runs in any image:
# musl-gcc gives a catatonit-sized binary, glibc's gcc -static is the fallback.
KEEPER_CC ?= $(shell command -v musl-gcc 2>/dev/null || echo gcc)
KEEPER_CFLAGS := -Wall -Wextra -Werror=format-security -static -Os

$(BUILD)/zeropod-init: init/zeropod-init.c init/init.mk
	@mkdir -p $(BUILD)
	$(KEEPER_CC) $(KEEPER_CFLAGS) -o $@.tmp init/zeropod-init.c
	strip $@.tmp
	mv -f $@.tmp $@

# `make build/zeropod-init` names the same file by a relative path.
ifneq ($(BUILD)/zeropod-init,build/zeropod-init)
build/zeropod-init: $(BUILD)/zeropod-init
endif
