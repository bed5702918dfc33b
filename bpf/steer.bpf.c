// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * steer: an sk_lookup program attached to one pod network namespace.
 *
 * It runs when a TCP SYN (or a stray packet matching no socket) looks for a
 * listener in the pod netns. For ports the agent tracks it counts the new
 * connection; for ports the agent has scaled down it hands the connection
 * to the activator's listening socket with bpf_sk_assign(). Everything else
 * (and every failed check) falls through to the kernel's normal lookup:
 * SK_DROP would send an RST, so it is never returned.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "steer.h"

/* From <sys/socket.h>, which drags in glibc's 32-bit stubs under -target bpf. */
#define AF_INET 2
#define AF_INET6 10

/*
 * Ports being steered. Key: local (destination) port, host byte order.
 * Value: u32 index into activator_socks. Presence means "scaled down".
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u32);
} steer_ports SEC(".maps");

/*
 * Activator listening sockets. Key: u32 index (host order). Value: the
 * socket; user space writes an fd (u64) and reads back the socket cookie.
 * The kernel drops the entry when the socket closes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, STEER_MAX_SOCKS);
	__type(key, __u32);
	__type(value, __u64);
} activator_socks SEC(".maps");

/*
 * New-connection counters. Key: local port, host byte order. Value:
 * struct steer_activity (host-order u64s). Only entries the agent seeded
 * are updated, so the map never fills up with stray ports.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_PORTS);
	__type(key, __u16);
	__type(value, struct steer_activity);
} activity SEC(".maps");

/*
 * The node's own addresses. Key: 16-byte address, network byte order,
 * IPv4 as ::ffff:a.b.c.d. Value: u8, unused (presence is what counts).
 * Connections from these are counted as node_* (kubelet probes).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_NODE_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u8);
} node_addrs SEC(".maps");

/*
 * The agent's own dial-outs. Key: struct steer_remote (source address in
 * network order, IPv4-mapped; source port in host order). Value: u8,
 * unused. Such connections are neither steered nor counted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STEER_MAX_BYPASS);
	__type(key, struct steer_remote);
	__type(value, __u8);
} bypass SEC(".maps");

static __always_inline void remote_of(struct bpf_sk_lookup *ctx, struct steer_remote *r)
{
	__u32 *a = (__u32 *)r->addr;
	__u32 ip4;

	if (ctx->family == AF_INET) {
		/* The barrier stops clang from merging this load with the one
		 * of remote_ip6[3] through a computed ctx pointer, which the
		 * verifier rejects ("dereference of modified ctx ptr"). */
		ip4 = ctx->remote_ip4;
		barrier_var(ip4);
		a[0] = 0;
		a[1] = 0;
		a[2] = bpf_htonl(0xffff);
		a[3] = ip4;
	} else {
		a[0] = ctx->remote_ip6[0];
		a[1] = ctx->remote_ip6[1];
		a[2] = ctx->remote_ip6[2];
		a[3] = ctx->remote_ip6[3];
	}
	/* remote_port is __be16 since 5.19 (local_port is host order). */
	r->port = bpf_ntohs(ctx->remote_port);
	r->pad = 0;
}

SEC("sk_lookup")
int steer(struct bpf_sk_lookup *ctx)
{
	struct steer_remote remote = {};
	struct steer_activity *act;
	struct bpf_sock *sk;
	__u16 port;
	__u32 *idx;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return SK_PASS;

	port = ctx->local_port;
	act = bpf_map_lookup_elem(&activity, &port);
	idx = bpf_map_lookup_elem(&steer_ports, &port);
	if (!act) {
		/* Keeps the two tests apart: clang would OR the pointers
		 * into one test, which the verifier rejects. */
		asm volatile("" ::: "memory");
		if (!idx)
			return SK_PASS;
	}

	remote_of(ctx, &remote);
	if (bpf_map_lookup_elem(&bypass, &remote))
		return SK_PASS;

	if (act) {
		/* Plain store for the timestamp: any recent value will do. */
		if (bpf_map_lookup_elem(&node_addrs, remote.addr)) {
			act->node_last_ns = bpf_ktime_get_boot_ns();
			__sync_fetch_and_add(&act->node_count, 1);
		} else {
			act->last_ns = bpf_ktime_get_boot_ns();
			__sync_fetch_and_add(&act->count, 1);
		}
	}

	if (!idx)
		return SK_PASS;
	sk = bpf_map_lookup_elem(&activator_socks, idx);
	if (!sk)
		return SK_PASS; /* activator socket closed: normal lookup */

	/* On failure (e.g. -EAFNOSUPPORT for an AF_INET activator and an
	 * IPv6 client) the normal lookup still runs. */
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
