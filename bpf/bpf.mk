# The steering eBPF program; built by the top-level Makefile.
$(BUILD)/steer.bpf.o: bpf/steer.bpf.c
	@mkdir -p $(BUILD)
	@echo "bpf/steer.bpf.c not written yet" >&2; false
