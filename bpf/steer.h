/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs shared by steer.bpf.c and its user-space loader
 * (nri_zeropod/bpf/steering.py mirrors them with struct formats; the
 * loader checks the key/value sizes of the pinned maps against them).
 *
 * Conventions: ports are in host byte order; addresses are 16 bytes in
 * network byte order, IPv4 stored IPv4-mapped (::ffff:a.b.c.d).
 */
#ifndef __STEER_H
#define __STEER_H

/* Activator listening sockets per pod (one per managed container). */
#define STEER_MAX_SOCKS 64
/* Ports a pod may have tracked or steered. */
#define STEER_MAX_PORTS 1024
/* Node addresses (kubelet probes come from one of them). */
#define STEER_MAX_NODE_ADDRS 256
/* Concurrent agent dial-outs that must skip steering. */
#define STEER_MAX_BYPASS 4096

/* Value of the `activity` map: new TCP connections seen for one port. */
struct steer_activity {
	__u64 last_ns;      /* bpf_ktime_get_boot_ns() of the last counted one */
	__u64 count;        /* connections from non-node addresses */
	__u64 node_last_ns; /* same, for sources listed in `node_addrs` */
	__u64 node_count;
};

/* A remote (source) address and port: key of the `bypass` map. */
struct steer_remote {
	__u8 addr[16]; /* network byte order, IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* host byte order */
	__u16 pad;     /* always zero: part of the hashed key */
};

#endif /* __STEER_H */
