# zeropod-criu, the agent's way into a container for CRIU; included by the top-level Makefile.
# Static like the keeper: it runs from the toolbox on any host.
HELPER_CC ?= $(shell command -v musl-gcc 2>/dev/null || echo gcc)
HELPER_CFLAGS := -Wall -Wextra -Werror=format-security -static -Os

$(BUILD)/zeropod-criu: init/zeropod-criu.c init/helper.mk
	@mkdir -p $(BUILD)
	$(HELPER_CC) $(HELPER_CFLAGS) -o $@.tmp init/zeropod-criu.c
	strip $@.tmp
	mv -f $@.tmp $@
