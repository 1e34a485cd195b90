// The cheapest reflector Linux has, the floor of the side-by-side
// benchmark's CPU costs: XDP swaps the Ethernet addresses and sends the
// frame back out of the interface it came in on (XDP_TX), in the driver,
// with no socket, copy or skb.
//
//   clang -O2 -g -target bpf -c xdp-tx.c -o xdp-tx.o
//   ip link set dev IF xdpdrv obj xdp-tx.o sec xdp
#include <linux/bpf.h>
#include <linux/if_ether.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;
	unsigned char *end = (unsigned char *)(long)ctx->data_end;
	unsigned char mac[ETH_ALEN];

	if (data + ETH_HLEN > end)
		return XDP_PASS;
	__builtin_memcpy(mac, data, ETH_ALEN);
	__builtin_memcpy(data, data + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(data + ETH_ALEN, mac, ETH_ALEN);
	return XDP_TX;
}

char _license[] SEC("license") = "GPL";
