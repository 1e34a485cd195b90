/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Definitions shared by the XDP steering program and its Rust loader
 * (xdp-redirect/src/maps.rs). Each side asserts the layout at compile time;
 * change both together.
 */
#ifndef RIALTO_H
#define RIALTO_H

#include <linux/types.h>

/*
 * IPv6 extension headers walked at most; a longer chain is malformed. The
 * userspace parser's limit (rialto-dataplane's ipv6::MAX_EXTENSION_HEADERS)
 * is the same, and a test proves both agree.
 */
#define RIALTO_IPV6_EXT_MAX 8

/* Why a frame got its verdict: one per-CPU counter per reason. */
enum rialto_reason {
	RIALTO_REDIRECT_VXLAN = 0, /* UDP to the VXLAN port from a tunnel peer */
	RIALTO_REDIRECT_VIP = 1,   /* destination is a service VIP:port/proto */
	RIALTO_REDIRECT_SNAT = 2,  /* destination is one of Rialto's SNAT addresses */
	RIALTO_PASS_NO_SOCKET = 3, /* owned, but no AF_XDP socket on this queue: fail open */
	RIALTO_PASS_NOT_IP = 4,    /* ARP, LLDP, ...: not IPv4 or IPv6 */
	RIALTO_PASS_NOT_OWNED = 5, /* IP, but not Rialto's */
	RIALTO_PASS_FRAGMENT = 6,  /* a fragment: no ports to match on */
	RIALTO_PASS_MALFORMED = 7, /* headers cut short or inconsistent */
	RIALTO_REASON_COUNT = 8,
};

/* An IPv6 address, or an IPv4 address mapped into IPv6 (::ffff:a.b.c.d). */
struct rialto_addr {
	__u8 bytes[16];
};

struct rialto_vip_key {
	struct rialto_addr addr;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;   /* zero */
};

struct rialto_config {
	__be16 vxlan_port;
	__u16 pad; /* zero */
};

struct rialto_counter {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct rialto_addr) == 16, "rialto_addr layout");
_Static_assert(sizeof(struct rialto_vip_key) == 20, "rialto_vip_key layout");
_Static_assert(__builtin_offsetof(struct rialto_vip_key, port) == 16, "rialto_vip_key.port");
_Static_assert(__builtin_offsetof(struct rialto_vip_key, proto) == 18, "rialto_vip_key.proto");
_Static_assert(sizeof(struct rialto_config) == 4, "rialto_config layout");
_Static_assert(sizeof(struct rialto_counter) == 16, "rialto_counter layout");
_Static_assert(RIALTO_REASON_COUNT == 8, "reason count, mirrored in Rust");

#endif /* RIALTO_H */
