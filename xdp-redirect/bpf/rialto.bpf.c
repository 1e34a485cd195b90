/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Rialto's steering program: redirect into AF_XDP exactly the frames Rialto
 * owns, pass everything else to the kernel.
 *
 * Owned: UDP to the VXLAN port from a tunnel peer to one of Rialto's VTEPs,
 * destination VIP:port/proto, destination in the SNAT address set. The redirect's fallback is XDP_PASS,
 * so with no socket on a queue (Rialto stopped or crashed) the kernel gets the
 * frame: a dead appliance never black-holes the host.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "rialto.h"

#define IPV4_FRAG_MASK 0x3fff /* MF flag and fragment offset */

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} rialto_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rialto_vip_key);
	__type(value, __u32);
} rialto_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rialto_addr);
	__type(value, __u32);
} rialto_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct rialto_addr);
	__type(value, __u32);
} rialto_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct rialto_addr);
	__type(value, __u32);
} rialto_vteps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rialto_config);
} rialto_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RIALTO_REASON_COUNT);
	__type(key, __u32);
	__type(value, struct rialto_counter);
} rialto_counters SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

struct ports {
	__be16 source;
	__be16 dest;
};

static __always_inline int verdict(struct xdp_md *ctx, __u32 reason, int action)
{
	struct rialto_counter *c = bpf_map_lookup_elem(&rialto_counters, &reason);

	if (c) {
		c->packets++;
		c->bytes += ctx->data_end - ctx->data;
	}
	return action;
}

static __always_inline int steer(struct xdp_md *ctx, __u32 reason)
{
	int action = bpf_redirect_map(&rialto_xsks, ctx->rx_queue_index, XDP_PASS);

	return verdict(ctx, action == XDP_REDIRECT ? reason : RIALTO_PASS_NO_SOCKET, action);
}

static __always_inline void map_ipv4(struct rialto_addr *a, __be32 v4)
{
	a->bytes[10] = 0xff;
	a->bytes[11] = 0xff;
	__builtin_memcpy(&a->bytes[12], &v4, sizeof(v4));
}

/* The extension headers walked to the upper layer; a fragment header stops the walk. */
static __always_inline int is_ipv6_ext(__u8 next)
{
	return next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	       next == IPPROTO_AH;
}

SEC("xdp")
int rialto_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct rialto_addr src = {}, dst = {};
	struct ethhdr *eth = data;
	int fragment = 0;
	void *l3, *l4;
	__u8 proto;
	__be16 type;

	if ((void *)(eth + 1) > data_end)
		return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
	type = eth->h_proto;
	l3 = eth + 1;
	if (type == bpf_htons(ETH_P_8021Q) || type == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > data_end)
			return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
		type = vlan->proto;
		l3 = vlan + 1;
	}

	if (type == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
		map_ipv4(&src, ip->saddr);
		map_ipv4(&dst, ip->daddr);
		fragment = (ip->frag_off & bpf_htons(IPV4_FRAG_MASK)) != 0;
		proto = ip->protocol;
		l4 = l3 + ip->ihl * 4;
	} else if (type == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
		__builtin_memcpy(src.bytes, &ip6->saddr, 16);
		__builtin_memcpy(dst.bytes, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < RIALTO_IPV6_EXT_MAX; i++) {
			struct ipv6_opt_hdr *ext = l4;

			if (!is_ipv6_ext(proto))
				break;
			if ((void *)(ext + 1) > data_end)
				return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
			/* AH counts its length in 4-byte words, less 2 (RFC 4302); the others in 8-byte words, less 1. */
			l4 += proto == IPPROTO_AH ? (ext->hdrlen + 2) * 4 : (ext->hdrlen + 1) * 8;
			proto = ext->nexthdr;
		}
		if (is_ipv6_ext(proto))
			return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);
		fragment = proto == IPPROTO_FRAGMENT;
	} else {
		return verdict(ctx, RIALTO_PASS_NOT_IP, XDP_PASS);
	}

	/* Replies to SNAT addresses are Rialto's whatever they carry (ICMP errors too). */
	if (bpf_map_lookup_elem(&rialto_snat, &dst))
		return steer(ctx, RIALTO_REDIRECT_SNAT);
	if (fragment)
		return verdict(ctx, RIALTO_PASS_FRAGMENT, XDP_PASS);
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return verdict(ctx, RIALTO_PASS_NOT_OWNED, XDP_PASS);

	/* UDP and TCP both start with the two ports. */
	struct ports *ports = l4;
	if ((void *)(ports + 1) > data_end)
		return verdict(ctx, RIALTO_PASS_MALFORMED, XDP_PASS);

	if (proto == IPPROTO_UDP) {
		__u32 zero = 0;
		struct rialto_config *cfg = bpf_map_lookup_elem(&rialto_config, &zero);

		if (cfg && ports->dest == cfg->vxlan_port && bpf_map_lookup_elem(&rialto_peers, &src) &&
		    bpf_map_lookup_elem(&rialto_vteps, &dst))
			return steer(ctx, RIALTO_REDIRECT_VXLAN);
	}

	struct rialto_vip_key vip = {
		.addr = dst,
		.port = ports->dest,
		.proto = proto,
	};
	if (bpf_map_lookup_elem(&rialto_vips, &vip))
		return steer(ctx, RIALTO_REDIRECT_VIP);

	return verdict(ctx, RIALTO_PASS_NOT_OWNED, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
