#!/usr/bin/env bash
# The main job, as far as Rialto goes today: a node and a peer namespace,
# Rialto serving two VIPs in reflect mode, the peer sending to them, live
# rates, then Rialto's exit summary. Everything is removed on exit or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=$root/target/release/rialto
name=demo$$
[ -x "$bin" ] || { echo "error: $bin is missing: run setup.sh first" >&2; exit 1; }

pid=
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" || true
	bash "$here/pair.sh" down "$name"
}
trap cleanup EXIT INT TERM

bash "$here/pair.sh" up "$name" 2
ip netns exec "$name-node" "$bin" run --mode reflect --iface "${name}n" --stats-interval 1 \
	--vip 198.18.100.1:7/UDP --vip '[fd00:100::1]:7/UDP' >"/tmp/$name.summary" &
pid=$!
sleep 1

echo "== 2 x 20000 datagrams from $name-peer to the VIPs, reflected by Rialto"
ip netns exec "$name-peer" python3 - <<'PY'
import socket
for family, vip in ((socket.AF_INET, "198.18.100.1"), (socket.AF_INET6, "fd00:100::1")):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect((vip, 7))
    back = 0
    for start in range(0, 20000, 32):
        for i in range(start, start + 32):
            s.send(b"datagram %d" % i)
        for i in range(start, start + 32):
            back += s.recv(64) == b"datagram %d" % i
    print(f"{vip}:7  sent 20000, reflected back intact {back}")
PY
echo "== ping the node itself (the kernel answers, not Rialto)"
ip netns exec "$name-peer" ping -c 2 -i 0.2 198.18.0.1 | tail -2
kill -TERM "$pid"
wait "$pid" || true
pid=
echo "== Rialto's summary"
python3 -m json.tool "/tmp/$name.summary"
rm -f "/tmp/$name.summary"
