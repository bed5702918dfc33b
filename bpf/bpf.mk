# The steering eBPF program (sk_lookup); built by the top-level Makefile.
# Only uapi headers and libbpf-dev's bpf_helpers.h: no kernel headers needed.
BPF_CLANG ?= clang-14
BPF_CFLAGS ?= -O2 -g -Wall -target bpf -I/usr/include/$(shell uname -m)-linux-gnu

.PHONY: bpf
bpf: $(BUILD)/steer.bpf.o

$(BUILD)/steer.bpf.o: bpf/steer.bpf.c bpf/steer.h
	@mkdir -p $(BUILD)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@
