#!/usr/bin/python3
"""Rialto side by side with bare AF_XDP, DPDK's testpmd and the Linux kernel.

    benches/side-by-side.py [--seconds S] [--out DIR]      (as root, after setup.sh)
    benches/side-by-side.py --soak MINUTES [--workers W]

One veth pair between two namespaces: the generator (`rialto-traffic gen`, pinned
to core 0) on one end, the device under test on the other. Each device gets
the same frames (UDP to the VIP 198.18.100.1:7 from 1 or 10,000 flows,
64- or 512-byte frames) on 1 or 2 queues (1 or 2 workers) and must send them
back out of the same interface:

  rialto        Rialto's full job (side-by-side/rialto.toml): Maglev over 8
                backends in 2 clusters, DNAT, SNAT, connection tracking,
                VXLAN toward the backend's cluster
  xdp-tx        an XDP program that swaps the MACs and returns XDP_TX
                (side-by-side/xdp-tx.c): no socket, no copy; the floor
  bare          Rialto's reflect mode: the same AF_XDP I/O, no pipeline
  xdp-io, xdp-macswap          dpdk-testpmd over the net_af_xdp PMD
  packet-io, packet-macswap    dpdk-testpmd over the net_af_packet PMD
                               (dpdk-compare/testpmd.sh)
  kernel        Linux doing Rialto's job: nftables DNAT and SNAT with
                conntrack, a kernel VXLAN device (side-by-side/kernel.sh)

The generator's sink checks every frame that comes back with etherparse:
rialto's and the kernel's must be forwarded as rialto.toml says, the others
must be the generator's own frames. Packets/s is the median over one-second
samples of what came back, with the generator sending flat out.

Printed: the table and the ratios rialto/bare, rialto/DPDK (testpmd
macswap over net_af_xdp) and rialto/kernel; then, for rialto, bare and
xdp-macswap, the zero-loss rate (the highest offered rate losing at most
0.1% of the frames, by a binary search of --zero-loss-steps trials) and
the ratios on it; then the CPU per packet of xdp-tx, rialto, bare,
xdp-macswap and the kernel at a fixed rate below every system's limit
(--cost-rate, 64 B, 10,000 flows, one worker, median of --cost-repeat
runs): the whole machine's (every core's busy time from /proc/stat,
generator and sink included), the device's (the machine's over xdp-tx's),
and of it the device's own code (its threads' user time), its XDP
program's (the kernel's BPF run-time statistics) and the rest, the
kernel's: on a veth, copy-mode AF_XDP's copies and skbs, and the receive
path that runs on the sender's core; and each one's latency at that rate
(the median and 99th percentile of the time from a frame's send to its
return, stamped in its payload, the generator spinning so that its own
sleeps are not timed). Written to --out: side-by-side.md,
side-by-side.png, side-by-side.json, cost.json.

--soak MINUTES runs Rialto alone that long at the highest rate it sustained
in a short flat-out run (less 10%), with flows churning, and samples its
memory (RSS), UMEM frames in use and live flows; it says whether each line
stayed flat.

--handoff prices handing replies over between workers (issue 19): Rialto
with two workers and the return path: the generator first sends each of
10,000 flows once and learns from its forwarded frame what the backend
would answer, then sends those replies, so that each arrives on the queue
of the worker that owns its flow, or each on the other queue (the worker
there hands it over, and wakes the owner at once, or once within
--handoff-wake-us); it reports the return packets/s each way (--repeat
runs, default 3) and the CPU per return packet at --cost-rate each way:
the difference is the cost of a handed-over frame.

--fleet prices sharing flows across a fleet (issue 17): a second Rialto,
node 2, in a namespace of its own, is the first's peer over a plain veth
(the sync link); the generator sends to node 1 flat out while 10,000 new
flows/s start, with `[fleet]` off and on by turns (--repeat times each),
and reports packets/s both ways and their ratio; the replication delay
(node 1's worker handing a new flow over to node 2's worker adopting it,
from node 2's histogram) at flat out and at 20,000 packets/s; and the bulk
sync of a million flows: node 1 holds them, node 2 starts empty, and the
time from its pull to every flow in its table.

RIALTO=PATH runs another rialto binary than target/release/rialto (and the
rialto-traffic beside it).
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RIALTO = Path(os.environ.get("RIALTO", ROOT / "target" / "release" / "rialto"))
TRAFFIC = RIALTO.parent / "rialto-traffic"
CONFIG = HERE / "side-by-side" / "rialto.toml"
KERNEL = HERE / "side-by-side" / "kernel.sh"
XDP_TX = HERE / "side-by-side" / "xdp-tx.c"
TESTPMD = ROOT / "dpdk-compare" / "testpmd.sh"
PAIR = ROOT / "testbed" / "pair.sh"

GEN_MAC, DUT_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
VIP = "198.18.100.1:7"
SIZES = (64, 512)
FLOWS = (1, 10_000)
WORKERS = (1, 2)
GEN_CORE = 0


@dataclass
class System:
    name: str
    what: str
    expect: str  # what the sink checks: "forward" (rialto.toml) or "echo"


SYSTEMS = [
    System("rialto", "Rialto, full job", "forward"),
    System("xdp-tx", "XDP_TX in the driver: MACs swapped, no socket (the floor)", "echo"),
    System("bare", "Rialto reflect (bare AF_XDP)", "echo"),
    System("xdp-io", "testpmd io, net_af_xdp", "echo"),
    System("xdp-macswap", "testpmd macswap, net_af_xdp", "echo"),
    System("packet-io", "testpmd io, net_af_packet", "echo"),
    System("packet-macswap", "testpmd macswap, net_af_packet", "echo"),
    System("kernel", "Linux: nftables NAT + conntrack + VXLAN", "forward"),
]
RATIOS = [("rialto/bare", "bare"), ("rialto/DPDK", "xdp-macswap"), ("rialto/kernel", "kernel")]
# The systems whose zero-loss rate is searched for, RFC 2544 style: the
# highest offered rate that loses at most LOSS_BOUND of the frames.
ZERO_LOSS = ("rialto", "bare", "xdp-macswap")
LOSS_BOUND = 0.001
TRIAL = 2.0
TARGETS = {"bare": 0.9, "xdp-macswap": 1.0, "kernel": 3.0}
# The CPU each system spends per packet at a fixed offered rate below every
# system's limit, in one configuration (64 B, 10,000 flows, one worker),
# against the floor: xdp-tx, what the generator, the sink and the cheapest
# reflector spend.
COST = ("xdp-tx", "rialto", "bare", "xdp-macswap", "kernel")
FLOOR = "xdp-tx"
COST_TARGET = 1 / 3  # rialto's CPU per packet at most this share of the kernel's
# Rialto once more in the CPU-per-packet measurement, its frames gathered
# for --cost-gather-us after a step that took less than a batch.
GATHERING = "rialto-gather"
LATENCY_SECONDS = 2  # each cost run's latency measurement, the generator spinning


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, **kw)


class Testbed:
    """The veth pair: NAME-peer (generator) and NAME-node (device under test)."""

    def __init__(self, queues):
        self.name = f"sbs{os.getpid() % 100000}"
        self.gen_ns, self.dut_ns = f"{self.name}-peer", f"{self.name}-node"
        self.gen_if, self.dut_if = f"{self.name}p", f"{self.name}n"
        self.queues = queues

    def __enter__(self):
        sh("bash", PAIR, "up", self.name, self.queues, stdout=subprocess.DEVNULL)
        sh("ip", "-n", self.gen_ns, "link", "set", self.gen_if, "address", GEN_MAC)
        sh("ip", "-n", self.dut_ns, "link", "set", self.dut_if, "address", DUT_MAC)
        return self

    def __exit__(self, *_):
        sh("bash", PAIR, "down", self.name, check=False, stdout=subprocess.DEVNULL)

    def cores(self):
        """The device under test's cores: the ones after the generator's first."""
        n = os.cpu_count() or 1
        return [(GEN_CORE + 1 + i) % n for i in range(self.queues)]


def wait_for(proc, logfile, text, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in Path(logfile).read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} did not appear in {logfile}:\n" + Path(logfile).read_text(errors="replace")[-3000:])


def run_rialto(ns, args, stdout, log):
    """`rialto ARGS` in namespace `ns`, once it says it is ready; its stderr
    in `log`. Each run starts with no flow left by the one before (the
    state directory of testbed/lib.sh's state_dir, removed here)."""
    state = Path("/dev/shm/rialto-testbed") / ns
    shutil.rmtree(state, ignore_errors=True)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, str(RIALTO), *map(str, args), "--state-dir", str(state)],
                            stdout=stdout, stderr=open(log, "w"))
    wait_for(proc, log, "rialto ready")
    return proc


def api(ns, path):
    """What Rialto's API in namespace `ns` answers at `path`."""
    return sh("ip", "netns", "exec", ns, "curl", "-sf", f"http://127.0.0.1:9600{path}",
              capture_output=True, text=True).stdout


class Device:
    """Starts and stops one system on the device-under-test end."""

    def __init__(self, system, bed, workdir, config=CONFIG, api=False, run_args=()):
        self.system, self.bed, self.workdir = system, bed, Path(workdir)
        self.config, self.api, self.run_args = config, api, list(run_args)
        self.proc = None
        self.summary = None
        # Frames the device says it transmitted (the kernel's are not counted).
        self.sent = None
        self.log = self.workdir / f"{system.name}.log"

    def __enter__(self):
        bed, name = self.bed, self.system.name
        cores = ",".join(map(str, bed.cores()))
        if name in ("rialto", "bare"):
            args = ["run", "--iface", bed.dut_if, "--cores", cores]
            args += ["--config", self.config] if name == "rialto" else ["--mode", "reflect", "--vip", VIP + "/UDP"]
            args += ["--api", "127.0.0.1:9600"] if self.api else ["--no-api"]
            args += self.run_args
            self.out = open(self.workdir / f"{name}.json", "w+")
            self.proc = run_rialto(bed.dut_ns, args, self.out, self.log)
        elif name == "kernel":
            mask = sum(1 << c for c in bed.cores())
            sh("bash", KERNEL, "up", bed.dut_ns, bed.dut_if, f"{mask:x}")
        elif name == "xdp-tx":
            sh("ip", "-n", bed.dut_ns, "link", "set", "dev", bed.dut_if, "xdpdrv", "obj", xdp_tx(self.workdir),
               "sec", "xdp")
        else:
            pmd, mode = name.split("-")
            args = ["bash", TESTPMD, bed.dut_ns, bed.dut_if, pmd, mode, GEN_CORE, *bed.cores()]
            self.proc = subprocess.Popen(list(map(str, args)), stdout=open(self.log, "w"),
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            wait_for(self.proc, self.log, "packets/burst=")
        return self

    def __exit__(self, *_):
        if self.system.name == "kernel":
            sh("bash", KERNEL, "down", self.bed.dut_ns, self.bed.dut_if, check=False)
            return
        if self.system.name == "xdp-tx":
            sh("ip", "-n", self.bed.dut_ns, "link", "set", "dev", self.bed.dut_if, "xdpdrv", "off", check=False)
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.system.name not in ("rialto", "bare") else signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.system.name in ("rialto", "bare"):
            self.out.seek(0)
            text = self.out.read()
            self.summary = json.loads(text) if text.strip() else None
            if self.summary:
                self.sent = sum(w["tx_packets"] for w in self.summary["workers"])
        else:
            # testpmd's own count: the totals it prints when it stops.
            totals = re.findall(r"TX-packets:\s+(\d+)", self.log.read_text(errors="replace"))
            self.sent = int(totals[-1]) if totals else None

    def pid(self):
        return self.proc.pid

    def status(self):
        return json.loads(api(self.bed.dut_ns, "/api/v1/status"))


def xdp_tx(workdir):
    """The floor's XDP program, compiled into `workdir` once."""
    obj = Path(workdir) / "xdp-tx.o"
    if not obj.exists():
        multiarch = sh("gcc", "-print-multiarch", capture_output=True, text=True).stdout.strip()
        sh("clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{multiarch}", "-c", XDP_TX,
           "-o", obj)
    return obj


def generator(bed, system, size, flows, seconds, warmup=1.0, extra=(), config=CONFIG):
    """The generator, started: its JSON report comes on its stdout."""
    args = ["gen", "--iface", bed.gen_if, "--core", GEN_CORE, "--dst-mac", DUT_MAC, "--vip", VIP,
            "--flows", flows, "--size", size, "--duration", seconds, "--warmup", warmup, *extra]
    if system.expect == "forward":
        args += ["--config", config]
    return subprocess.Popen(["ip", "netns", "exec", bed.gen_ns, str(TRAFFIC), *map(str, args)],
                            stdout=subprocess.PIPE, text=True)


def report_of(gen):
    out, _ = gen.communicate()
    if gen.returncode != 0:
        raise RuntimeError(f"the generator failed ({gen.returncode})")
    return json.loads(out)


def generate(bed, system, size, flows, seconds, warmup=1.0, extra=(), config=CONFIG):
    return report_of(generator(bed, system, size, flows, seconds, warmup, extra, config))


@dataclass
class Cell:
    system: str
    size: int
    flows: int
    workers: int
    pps: int
    loss: float
    ok: int
    received: int
    mismatches: dict = field(default_factory=dict)
    # Packets/s of each run (one-second samples' medians).
    samples: list = field(default_factory=list)
    # The highest offered rate lost no more than LOSS_BOUND (searched for
    # the ZERO_LOSS systems only).
    zero_loss: int | None = None


def measure(bed, system, size, flows, seconds, workdir):
    with Device(system, bed, workdir) as device:
        report = generate(bed, system, size, flows, seconds)
    cell = Cell(system.name, size, flows, bed.queues, report["median_rx_pps"], report["loss"], report["ok"],
                report["received"], report["mismatches"], [report["median_rx_pps"]])
    drops = {}
    for w in (device.summary or {}).get("workers", []):
        for reason, n in w["drops"].items():
            if n:
                drops[reason] = drops.get(reason, 0) + n
    note = f" rialto drops {drops}" if drops else ""
    if device.sent is not None:
        note += f"  ({system.name} says it sent {device.sent:,})"
    bad = f" MISMATCHES {cell.mismatches}" if cell.mismatches else ""
    log(f"  {system.name:15} {size:4}B {flows:6} flows {bed.queues}w: {cell.pps:9,} pkt/s"
        f"  loss {cell.loss:6.1%}  checked ok {cell.ok:,}/{cell.received:,}{bad}{note}")
    return cell


def combine(runs):
    """One cell from repeated runs: the median packets/s and loss, the sums
    of what was checked, every run's packets/s in `samples`."""
    first = runs[0]
    mismatches = {}
    for r in runs:
        for reason, n in r.mismatches.items():
            mismatches[reason] = mismatches.get(reason, 0) + n
    return Cell(first.system, first.size, first.flows, first.workers,
                int(statistics.median(r.pps for r in runs)), statistics.median(r.loss for r in runs),
                sum(r.ok for r in runs), sum(r.received for r in runs), mismatches, [r.pps for r in runs])


def config_label(size, flows, workers):
    return f"{size}B {flows:,} flow{'s' if flows > 1 else ''} {workers}w"


def table(cells, systems):
    by = {(c.system, c.size, c.flows, c.workers): c for c in cells}
    configs = sorted({(c.size, c.flows, c.workers) for c in cells})
    names = {s.name for s in systems}
    ratio_heads = [r for r, other in RATIOS if other in names and "rialto" in names]
    head = ["inner frame", "flows", "workers"] + [s.name for s in systems] + ratio_heads
    rows = []
    for size, flows, workers in configs:
        row = [f"{size} B", f"{flows:,}", str(workers)]
        for s in systems:
            c = by.get((s.name, size, flows, workers))
            row.append(f"{c.pps:,}" if c else "-")
        for r, other in RATIOS:
            if r not in ratio_heads:
                continue
            a, b = by.get(("rialto", size, flows, workers)), by.get((other, size, flows, workers))
            row.append(f"{a.pps / b.pps:.2f}" if a and b and b.pps else "-")
        rows.append(row)
    return head, rows


def render_text(head, rows):
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join("{:>%d}" % w for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])


def render_markdown(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def targets(cells):
    """Which targets each configuration meets."""
    by = {(c.system, c.size, c.flows, c.workers): c for c in cells}
    out = []
    for r, other in RATIOS:
        got = []
        for (name, size, flows, workers), c in sorted(by.items()):
            b = by.get((other, size, flows, workers))
            if name == "rialto" and b and b.pps:
                got.append(c.pps / b.pps)
        if got:
            met = sum(g >= TARGETS[other] for g in got)
            out.append(f"{r} >= {TARGETS[other]}: met in {met} of {len(got)} configurations "
                       f"(median {statistics.median(got):.2f}, range {min(got):.2f}-{max(got):.2f})")
    return out


def preflight(args):
    """Everything the run will need, checked before the first measurement:
    a long run must not fail at its end for want of a module or a tool."""
    missing = [f"{need} (run setup.sh first)" for need in (RIALTO, TRAFFIC) if not need.exists()]
    tools = ["ip", "ethtool", "curl", "nft", "stdbuf"]
    if args.soak is None and not args.fleet:
        tools += ["bpftool"] + (["clang", "gcc"] if not args.handoff else [])
    if args.soak is None and not args.fleet and not args.handoff and (not args.only or any(s.startswith(("xdp-", "packet-")) for s in args.only)):
        tools.append("dpdk-testpmd")
    missing += [f"the {tool} command" for tool in tools if shutil.which(tool) is None]
    try:
        import matplotlib  # noqa: F401 (the plots, at the end)
    except ImportError:
        missing.append(f"the matplotlib module for {sys.executable} (Debian's python3-matplotlib, "
                       "with /usr/bin/python3)")
    if missing:
        sys.exit("error: the benchmark needs " + "; ".join(missing))


def plot(cells, systems, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(c.size, c.flows, c.workers) for c in cells})
    by = {(c.system, c.size, c.flows, c.workers): c.pps for c in cells}
    fig, ax = plt.subplots(figsize=(13, 6.5))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(configs))]
        ax.bar(xs, [by.get((s.name,) + cfg, 0) / 1e3 for cfg in configs], width, label=s.what)
    ax.set_xticks(range(len(configs)), [config_label(*cfg) for cfg in configs], rotation=20, ha="right")
    ax.set_ylabel("thousand packets/s (median of 1 s samples)")
    ax.set_title("Packets/s forwarded back out of the veth, per configuration")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def side_by_side(args):
    systems = [s for s in SYSTEMS if not args.only or s.name in args.only]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rialto-sbs.") as work:
        for workers in args.workers:
            with Testbed(workers) as bed:
                log(f"== {workers} worker(s): generator on core {GEN_CORE}, device under test on cores {bed.cores()}")
                for size in args.sizes:
                    for flows in args.flows:
                        # Repeats interleave the systems, so a noisy moment
                        # does not fall on one system's runs only.
                        runs = [measure(bed, s, size, flows, args.seconds, work)
                                for _ in range(args.repeat) for s in systems]
                        here = [combine([r for r in runs if r.system == s.name]) for s in systems]
                        for cell in here:
                            if cell.system in ZERO_LOSS and args.zero_loss_steps:
                                system = next(s for s in systems if s.name == cell.system)
                                cell.zero_loss = zero_loss(bed, system, cell, args.zero_loss_steps, work)
                        cells += here
        costs = []
        if args.cost_seconds:
            names = [FLOOR] + [n for n in COST if n != FLOOR and n in {s.name for s in systems}]
            with Testbed(1) as bed, bpf_stats():
                log(f"== CPU per packet at {args.cost_rate:,} packets/s, 64 B, 10,000 flows, 1 worker")
                rialto = next(s for s in SYSTEMS if s.name == "rialto")
                gathering = "rialto" in names and args.cost_gather_us > 0
                for _ in range(args.cost_repeat):
                    costs += [cost(bed, next(s for s in SYSTEMS if s.name == n), args.cost_rate, args.cost_seconds,
                                   work) for n in names]
                    if gathering:
                        costs.append(cost(bed, rialto, args.cost_rate, args.cost_seconds, work, label=GATHERING,
                                          run_args=["--rx-gather-us", args.cost_gather_us]))
    head, rows = table(cells, systems)
    lines = targets(cells)
    print(render_text(head, rows))
    print()
    for line in lines:
        print(line)
    zl_head, zl_rows = zero_loss_table(cells)
    if zl_rows:
        print()
        print(f"zero-loss rate (packets/s offered with at most {LOSS_BOUND:.1%} lost, {args.zero_loss_steps} "
              f"steps of {TRIAL:.0f} s):")
        print(render_text(zl_head, zl_rows))
    if costs:
        cost_head, cost_rows, cost_lines = cost_table(costs)
        cost_title = (f"CPU per packet (ns) at {args.cost_rate:,} packets/s offered (64 B, 10,000 flows, 1 worker; "
                      f"{args.cost_seconds:g} s, median of {args.cost_repeat}): the machine's (every core's busy time, "
                      f"generator and sink included); the device's, over {FLOOR}'s; of it, its own code (its "
                      "threads' user time), its XDP program's run time and the rest, the kernel's; and, at the same rate "
                      f"for {LATENCY_SECONDS} s more, the generator spinning, how long the frames took to come back, "
                      "sent to received at the generator")
        print()
        print(cost_title + ":")
        print(render_text(cost_head, cost_rows))
        for line in cost_lines:
            print(line)
    elapsed = time.monotonic() - started
    print(f"({len(cells) * args.repeat} runs of {args.seconds} s in {elapsed:.0f} s; packets/s: median of "
          f"one-second samples of the frames that came back, the generator sending flat out"
          f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''})")
    md = ["# Rialto side by side", "", f"`benches/side-by-side.py --seconds {args.seconds} --repeat {args.repeat}`, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores. Packets/s back at the generator "
          "(median of one-second samples, flat out).", "", render_markdown(head, rows), ""]
    md += [f"- {line}" for line in lines]
    if zl_rows:
        md += ["", f"Zero-loss rate: the highest offered rate (packets/s) at which at most {LOSS_BOUND:.1%} of the "
               f"frames were lost, found by a binary search of {args.zero_loss_steps} trials of {TRIAL:.0f} s "
               "between 0 and 1.1 × flat out (RFC 2544 §26.1, with a loss bound).", "",
               render_markdown(zl_head, zl_rows)]
    if costs:
        md += ["", cost_title + ".", "", render_markdown(cost_head, cost_rows), ""] + [f"- {line}" for line in cost_lines]
    md += ["", "| system | what |", "|---|---|"] + [f"| {s.name} | {s.what} |" for s in systems]
    (out / "side-by-side.md").write_text("\n".join(md) + "\n")
    (out / "side-by-side.json").write_text(json.dumps([c.__dict__ for c in cells], indent=1))
    if costs:
        (out / "cost.json").write_text(json.dumps([c.__dict__ for c in costs], indent=1))
    plot(cells, systems, out / "side-by-side.png")
    print(f"written: {out / 'side-by-side.md'}, {out / 'side-by-side.png'}, {out / 'side-by-side.json'}")
    bad = [c for c in cells if c.mismatches or c.ok == 0]
    if bad:
        for c in bad:
            log(f"error: {c.system} {config_label(c.size, c.flows, c.workers)}: "
                f"{c.ok} frames as expected, mismatches {c.mismatches}")
        return 1
    return 0


def zero_loss(bed, system, cell, steps, workdir):
    """The highest rate, to a step of 1.1 × flat out / 2^steps, at which
    `system` loses at most LOSS_BOUND of the frames: a binary search of
    `steps` trials against one running device."""
    low, high = 0, int(cell.pps * 1.1) + 1
    with Device(system, bed, workdir):
        for _ in range(steps):
            rate = (low + high) // 2
            report = generate(bed, system, cell.size, cell.flows, TRIAL, warmup=0.5, extra=["--rate", rate])
            ok = report["loss"] <= LOSS_BOUND and not report["mismatches"]
            log(f"    zero-loss search, {system.name}: {rate:,} packets/s offered, loss {report['loss']:.3%}: "
                f"{'pass' if ok else 'fail'}")
            low, high = (rate, high) if ok else (low, rate)
    return low


@dataclass
class Cost:
    """What one system spent per packet (ns of CPU): the whole machine
    (every core's time not idle, /proc/stat), and of it the device's own
    code (its threads' user time), and its XDP program's run time (the
    kernel's BPF statistics); and how long its frames took to come back,
    sent to received at the generator (µs, median and 99th percentile)."""
    system: str
    loss: float
    busy: float
    code: float
    xdp: float
    p50: float
    p99: float


def cpu_busy():
    """Seconds every core has spent not idle (/proc/stat: the idle time of
    a tickless core is measured, not sampled)."""
    fields = open("/proc/stat").readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def user_seconds(pid):
    """The user time of every thread of process `pid`, in seconds."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        ticks += int(stat[stat.rindex(")") + 2:].split()[11])  # utime, field 14
    return ticks / os.sysconf("SC_CLK_TCK")


def xdp_seconds(bed):
    """The run time of the XDP program on the device's interface (none: 0)."""
    link = json.loads(sh("ip", "-n", bed.dut_ns, "-j", "link", "show", "dev", bed.dut_if,
                         capture_output=True, text=True).stdout)[0]
    prog = link.get("xdp", {}).get("prog", {}).get("id")
    if prog is None:
        return 0.0
    shown = json.loads(sh("bpftool", "-j", "prog", "show", "id", prog, capture_output=True, text=True).stdout)
    return shown.get("run_time_ns", 0) / 1e9


@contextlib.contextmanager
def bpf_stats():
    """The kernel's run-time statistics of BPF programs, on meanwhile."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(was)


def cost(bed, system, rate, seconds, workdir, extra=(), lead=1.5, run_args=(), label=None):
    """Runs `system` (Rialto with `run_args`) at `rate` packets/s offered
    (64 B, 10,000 flows), and measures for `seconds`, after `lead` seconds,
    what it spends (reported as `label`, if given); then how long its frames
    take to come back at that rate."""
    with Device(system, bed, workdir, run_args=run_args) as device:
        gen = generator(bed, system, 64, 10_000, seconds + lead, extra=["--rate", rate, *extra])
        time.sleep(lead)
        own = device.pid() if device.proc else None
        before = (cpu_busy(), user_seconds(own) if own else 0.0, xdp_seconds(bed))
        time.sleep(seconds)
        after = (cpu_busy(), user_seconds(own) if own else 0.0, xdp_seconds(bed))
        report = report_of(gen)
        # The latency apart, at the same rate, the generator spinning (not
        # sleeping between frames, so its sleeps are not timed).
        timed = generate(bed, system, 64, 10_000, LATENCY_SECONDS, warmup=0.5,
                         extra=["--rate", rate, "--spin", *extra])
    for r in (report, timed):
        if r["mismatches"]:
            raise RuntimeError(f"{system.name}: frames not as expected: {r['mismatches']}")
    busy, code, xdp = (1e9 * (b - a) / (rate * seconds) for a, b in zip(before, after))
    latency = timed.get("latency") or {}
    p50, p99 = (latency.get(f"{q}_ns", 0) / 1e3 for q in ("p50", "p99"))
    c = Cost(label or system.name, report["loss"], busy, code, xdp, p50, p99)
    log(f"  {system.name:12} {' '.join(map(str, [*extra, *run_args]))} at {rate:,} packets/s: {c.busy:6.0f} ns of CPU per packet (its code {c.code:.0f}, "
        f"its XDP program {c.xdp:.0f}), loss {c.loss:.3%}, latency p50 {c.p50:.0f} µs, p99 {c.p99:.0f} µs")
    return c


def median_cost(name, runs):
    """One Cost named `name`: each figure the median of `runs`'."""
    return Cost(name, *(statistics.median(getattr(c, f) for c in runs) for f in ("loss", "busy", "code", "xdp", "p50", "p99")))


def cost_table(costs):
    """Per system, the median of its runs: the machine's CPU per packet,
    and the device's, over the floor's, split by where it was spent."""
    names = dict.fromkeys(c.system for c in costs)
    med = {n: median_cost(n, [c for c in costs if c.system == n]) for n in names}
    floor = med[FLOOR]
    head = ["system", "loss", "machine", "device", "its code", "its XDP program", "kernel", "latency p50 (µs)",
            "p99 (µs)"]
    rows, device = [], {}
    for n, c in med.items():
        device[n] = c.busy - floor.busy
        kernel = device[n] - c.code - c.xdp if n != FLOOR else 0
        rows.append([n, f"{c.loss:.2%}", f"{c.busy:.0f}", f"{device[n]:.0f}", f"{c.code:.0f}", f"{c.xdp:.0f}",
                     f"{kernel:.0f}", f"{c.p50:.1f}", f"{c.p99:.1f}"])
    lines = []
    for name in ("rialto", GATHERING):
        if name not in device or "kernel" not in device:
            continue
        target = f"{name}/kernel CPU per packet <= {COST_TARGET:.2f}: "
        rialto, kernel = device[name], device["kernel"]
        if rialto > 0 and kernel > 0:
            ratio = rialto / kernel
            lines.append(f"{target}{'met' if ratio <= COST_TARGET else 'not met'} ({ratio:.2f})")
        else:
            # The floor's run spent more than a device's: this run's noise
            # is larger than what it would measure.
            lines.append(f"{target}not measured (over the floor's, {name} {rialto:.0f} and kernel "
                         f"{kernel:.0f} ns a packet: the run's noise is larger than the devices' cost)")
    return head, rows, lines


def zero_loss_table(cells):
    """Per configuration, the zero-loss rates and rialto's ratios to bare and
    to testpmd on them."""
    by = {(c.system, c.size, c.flows, c.workers): c.zero_loss for c in cells if c.zero_loss is not None}
    names = [n for n in ZERO_LOSS if any(k[0] == n for k in by)]
    if not names:
        return [], []
    ratios = [(r, other) for r, other in RATIOS if other in names and "rialto" in names]
    head = ["inner frame", "flows", "workers"] + names + [r for r, _ in ratios]
    rows = []
    for size, flows, workers in sorted({k[1:] for k in by}):
        row = [f"{size} B", f"{flows:,}", str(workers)]
        row += [f"{by[(n, size, flows, workers)]:,}" if (n, size, flows, workers) in by else "-" for n in names]
        for _, other in ratios:
            a, b = by.get(("rialto", size, flows, workers)), by.get((other, size, flows, workers))
            row.append(f"{a / b:.2f}" if a is not None and b else "-")
        rows.append(row)
    return head, rows


def flat(samples, what, tolerance, floor):
    """Whether a series stays flat after its first fifth: the median of its
    second half within `tolerance` (relative) or `floor` (absolute) of the
    first half's."""
    settled = samples[len(samples) // 5:]
    if len(settled) < 4:
        return f"{what}: too few samples to judge"
    half = len(settled) // 2
    a, b = statistics.median(settled[:half]), statistics.median(settled[half:])
    verdict = "flat" if abs(b - a) <= max(tolerance * a, floor) else "NOT FLAT"
    return (f"{what}: {verdict} (median {a:,.0f} in the first half, {b:,.0f} in the second; "
            f"min {min(settled):,}, max {max(settled):,})")


def soak(args):
    workers = args.workers[0]
    system = SYSTEMS[0]
    seconds = args.soak * 60
    churn, space, flows, timeout = 2_000, 200_000, 10_000, 5
    interval = max(1.0, min(10.0, seconds / 30))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rialto-soak.") as work:
        config = Path(work) / "soak.toml"
        config.write_text(CONFIG.read_text().replace("udp = 30", f"udp = {timeout}"))
        with Testbed(workers) as bed:
            with Device(system, bed, work, config=config) as _:
                probe = generate(bed, system, 64, flows, 3)
            rate = args.soak_rate or int(probe["median_rx_pps"] * 0.9)
            log(f"== soak: {args.soak} min, {workers} worker(s), {rate:,} packets/s (flat out gave "
                f"{probe['median_rx_pps']:,}), {flows:,} flows at a time sliding through {space:,} at "
                f"{churn:,} new flows/s, UDP timeout {timeout} s")
            with Device(system, bed, work, config=config, api=True) as device:
                gen = subprocess.Popen(
                    ["ip", "netns", "exec", bed.gen_ns, str(TRAFFIC), "gen", "--iface", bed.gen_if, "--core",
                     str(GEN_CORE), "--dst-mac", DUT_MAC, "--vip", VIP, "--config", str(CONFIG), "--flows",
                     str(flows), "--flow-space", str(space), "--churn", str(churn), "--rate", str(rate),
                     "--duration", str(seconds), "--warmup", "0"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                samples = []
                start = time.monotonic()
                while gen.poll() is None:
                    time.sleep(interval)
                    if gen.poll() is not None:
                        break
                    status = device.status()
                    rss = int(next(line.split()[1] for line in Path(f"/proc/{device.pid()}/status").read_text()
                                   .splitlines() if line.startswith("VmRSS:")))
                    ws = status["workers"]
                    sample = {
                        "t": round(time.monotonic() - start),
                        "rss_kib": rss,
                        "umem_in_use": sum(w["umem"]["frames"] - w["umem"]["free"] for w in ws if w.get("umem")),
                        "flows_live": sum(w["balance"]["flows"]["live"] for w in ws if w.get("balance")),
                        "tx_packets": sum(w["tx_packets"] for w in ws),
                    }
                    samples.append(sample)
                    log("  t={t:5}s  RSS {rss_kib:,} KiB  UMEM frames in use {umem_in_use:,}  live flows "
                        "{flows_live:,}".format(**sample))
                report = json.loads(gen.stdout.read())
            summary = device.summary
    umem_frames = sum(w["umem"]["frames"] for w in summary["workers"]) if summary else 0
    balanced = all(w["umem_balanced"] for w in summary["workers"]) if summary else False
    lines = [
        flat([s["rss_kib"] for s in samples], "RSS (KiB)", 0.02, 1024),
        flat([s["umem_in_use"] for s in samples], "UMEM frames in use", 0.05, 0.05 * umem_frames),
        flat([s["flows_live"] for s in samples], "live flows", 0.05, 100),
    ]
    drops = {}
    for w in (summary or {}).get("workers", []):
        for reason, n in w["drops"].items():
            if n:
                drops[reason] = drops.get(reason, 0) + n
    created = sum(w["balance"]["flows"]["created"] for w in summary["workers"]) if summary else 0
    expired = sum(w["balance"]["flows"]["expired"] for w in summary["workers"]) if summary else 0
    lines += [
        f"traffic: sent {report['sent']:,}, came back {report['received']:,} (loss {report['loss']:.3%}), "
        f"checked ok {report['ok']:,}, mismatches {report['mismatches'] or 'none'}",
        f"flows created {created:,}, expired {expired:,}; Rialto's drops {drops or 'none'}; "
        f"every UMEM frame accounted for at exit: {balanced}",
    ]
    for line in lines:
        print(line)
    (out / "soak.json").write_text(json.dumps({"rate": rate, "samples": samples, "report": report}, indent=1))
    plot_soak(samples, out / "soak.png")
    print(f"written: {out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if samples and not any("NOT FLAT" in line for line in lines) and balanced else 1


def plot_soak(samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    t = [s["t"] for s in samples]
    for ax, key, label in zip(axes, ("rss_kib", "umem_in_use", "flows_live"),
                              ("RSS (KiB)", "UMEM frames in use", "live flows")):
        ax.plot(t, [s[key] for s in samples], marker=".")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds")
    axes[0].set_title("Rialto under churning flows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# The fleet benchmark's sync link, between node 1 (the device under test)
# and node 2, and the UDP port the nodes sync on.
SYNC_1, SYNC_2, SYNC_PORT = "198.18.9.1", "198.18.9.2", 7946
LIB = ROOT / "testbed" / "lib.sh"


class Peer:
    """Node 2: a namespace of its own, joined to the device under test's by
    a veth (the sync link), and the Rialto that runs there."""

    def __init__(self, bed, workdir):
        self.bed, self.workdir = bed, Path(workdir)
        self.ns, self.if1, self.if2 = f"{bed.name}-b", f"{bed.name}s", f"{bed.name}b"
        self.proc = None

    def __enter__(self):
        sh("bash", "-c", f". {LIB} && ns_add {self.ns}")
        sh("ip", "link", "add", self.if1, "netns", self.bed.dut_ns, "type", "veth", "peer", "name", self.if2,
           "netns", self.ns)
        for ns, iface, addr in ((self.bed.dut_ns, self.if1, SYNC_1), (self.ns, self.if2, SYNC_2)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface)
            sh("ip", "-n", ns, "link", "set", iface, "up")
            sh("bash", "-c", f". {LIB} && veth_tune {ns} {iface}")
        return self

    def __exit__(self, *_):
        self.stop()
        sh("bash", "-c", f". {LIB} && ns_del {self.ns}", check=False)

    def start(self, config):
        """Rialto on node 2, with no flow left from before."""
        self.log = self.workdir / "node2.log"
        args = ["run", "--iface", self.if2, "--cores", self.bed.cores()[0], "--config", config,
                "--api", "127.0.0.1:9600"]
        self.proc = run_rialto(self.ns, args, subprocess.DEVNULL, self.log)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def api(self, path):
        return api(self.ns, path)


def live_flows(status):
    return sum(w["balance"]["flows"]["live"] for w in status["workers"] if w.get("balance"))


def fleet_configs(work, udp, flows_per_worker, snat=1):
    """Node 1's config without and with `[fleet]`, and node 2's; node 1
    has `snat` SNAT addresses from 198.18.200.1 (64,512 UDP flows each),
    node 2 the one after them."""
    ours = [f"198.18.200.{i}" for i in range(1, snat + 1)]
    theirs = [f"198.18.200.{snat + 1}"]
    base = (CONFIG.read_text().replace("udp = 30", f"udp = {udp}")
            .replace("flows_per_worker = 262144", f"flows_per_worker = {flows_per_worker}")
            .replace('addresses = ["198.18.200.1"]', f"addresses = {json.dumps(ours)}"))
    key = Path(work) / "fleet.key"
    key.write_text(os.urandom(32).hex())

    def fleet(node, listen, peer, addr, vtep, snat):
        return (f'[fleet]\nnode = {node}\nlisten = "{listen}:{SYNC_PORT}"\nkey_file = "{key}"\n'
                f'vtep_prefix = "198.18.0.0/20"\npeers = [{{ node = {peer}, addr = "{addr}:{SYNC_PORT}", '
                f'vtep = "{vtep}", snat = {json.dumps(snat)} }}]\n\n')

    two = (base.replace('vteps = ["198.18.0.1"]', f'vteps = ["{SYNC_2}"]')
           .replace(f"addresses = {json.dumps(ours)}", f"addresses = {json.dumps(theirs)}"))
    texts = {
        "off": base,
        "on": fleet(1, SYNC_1, 2, SYNC_2, SYNC_2, theirs) + base,
        "node2": fleet(2, SYNC_2, 1, SYNC_1, "198.18.0.1", ours) + two,
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = Path(work) / f"fleet-{name}-{udp}.toml"
        paths[name].write_text(text)
    return paths


def delay_buckets(peer):
    """Node 2's replication delay histogram: (upper bound in s, cumulative count)."""
    out = []
    for line in peer.api("/metrics").splitlines():
        m = re.match(r'rialto_fleet_replication_delay_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            out.append((float(m.group(1)), int(float(m.group(2)))))
    return out


def delay_quantiles(before, after, qs=(0.5, 0.99)):
    """Quantiles in ms of what the histogram counted between two readings,
    interpolated within buckets as Prometheus's histogram_quantile does."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1] if counts else 0
    result = {"flows": total}
    for q in qs:
        rank, low, below = q * total, 0.0, 0
        for le, cum in counts:
            if total and cum >= rank:
                high = low if le == float("inf") else le
                result[f"p{round(q * 100)}_ms"] = (low + (high - low) * (rank - below) / max(cum - below, 1)) * 1e3
                break
            low, below = le, cum
    return result


def fleet_bench(args):
    """What sharing flows costs node 1, and how fast they get to node 2."""
    system = SYSTEMS[0]
    churn, space, window = 10_000, 1_000_000, 10_000
    repeat = args.repeat or 3
    runs = {"off": [], "on": []}
    delays_flat = []
    with tempfile.TemporaryDirectory(prefix="rialto-fleet.") as work:
        cost = fleet_configs(work, udp=5, flows_per_worker=262144)
        bulk = fleet_configs(work, udp=300, flows_per_worker=1 << 21, snat=16)
        with Testbed(1) as bed, Peer(bed, work) as peer:
            peer.start(cost["node2"])
            log(f"== fleet: node 1 forwards {window:,} flows at a time sliding through {space:,} at {churn:,} "
                f"new flows/s, 64-byte frames, flat out; [fleet] off and on by turns, {repeat} runs each")
            churning = ["--flow-space", space, "--churn", churn]
            for _ in range(repeat):
                for mode in ("off", "on"):
                    with Device(system, bed, work, config=cost[mode], api=True) as dev:
                        if mode == "on":
                            wait_for(dev.proc, dev.log, "fleet: synced")
                        before = delay_buckets(peer)
                        report = generate(bed, system, 64, window, args.seconds, extra=churning)
                        after = delay_buckets(peer)
                    runs[mode].append(report["median_rx_pps"])
                    note = ""
                    if mode == "on":
                        delays_flat.append(delay_quantiles(before, after))
                        note = "  replication delay " + fmt_delay(delays_flat[-1])
                    log(f"  [fleet] {mode:3}: {report['median_rx_pps']:9,} packets/s, loss {report['loss']:.1%}, "
                        f"mismatches {report['mismatches'] or 'none'}{note}")
            off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
            light = 2 * churn
            with Device(system, bed, work, config=cost["on"], api=True) as dev:
                wait_for(dev.proc, dev.log, "fleet: synced")
                before = delay_buckets(peer)
                generate(bed, system, 64, window, args.seconds, extra=[*churning, "--rate", light])
                delay_light = delay_quantiles(before, delay_buckets(peer))
                fleet_status = dev.status()["fleet"]
            log(f"  at {light:,} packets/s: replication delay {fmt_delay(delay_light)}")
            peer.stop()

            # Bulk: node 1 holds --fleet-flows flows (a million), node 2 starts empty.
            with Device(system, bed, work, config=bulk["on"], api=True) as dev:
                wait_for(dev.proc, dev.log, "fleet: synced")
                # Every flow sent at least twice at the ~250,000 new flows/s
                # node 1 makes here.
                generate(bed, system, 64, args.fleet_flows, max(2, args.fleet_flows // 125_000),
                         config=bulk["on"])
                held = live_flows(dev.status())
                log(f"== bulk sync: node 1 holds {held:,} flows; node 2 starts with none")
                started = time.monotonic()
                peer.start(bulk["node2"])
                wait_for(peer.proc, peer.log, "every flow of the peer is here", seconds=60)
                arrived = time.monotonic() - started
                pulled = int(re.search(r"millis=(\d+)", next(
                    line for line in peer.log.read_text().splitlines()
                    if "every flow of the peer is here" in line)).group(1))
                while live_flows(json.loads(peer.api("/api/v1/status"))) < held and \
                        time.monotonic() - started < 60:
                    time.sleep(0.05)
                adopted_in = time.monotonic() - started
                peer_status = json.loads(peer.api("/api/v1/status"))
                adopted = live_flows(peer_status)
            peer.stop()
    ratio = on / off if off else 0
    peer_fleet = peer_status["fleet"]
    lines = [
        f"forward packets/s at {churn:,} new flows/s, median of {repeat}: [fleet] off {off:,.0f}, on {on:,.0f}: "
        f"ratio {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}); "
        f"runs off {runs['off']}, on {runs['on']}",
        "replication delay at flat out (per run): " + "; ".join(fmt_delay(d) for d in delays_flat),
        f"replication delay at {light:,} packets/s: {fmt_delay(delay_light)}",
        f"node 1's syncer in the last run: {fleet_status['flows_sent']:,} flows in "
        f"{fleet_status['datagrams_sent']:,} datagrams, changes lost {fleet_status['outbox_full']:,}",
        f"bulk sync: {adopted:,} of node 1's {held:,} flows in node 2's table {adopted_in:.2f} s after it started; "
        f"pull to its peer's last flow {pulled} ms, 'every flow here' logged {arrived:.2f} s after the start "
        f"(target <= 2 s: {'met' if pulled <= 2000 else 'NOT met'}); node 2's inbox full {peer_fleet['inbox_full']:,}, "
        f"sequences lost {sum(p['lost'] for p in peer_fleet['peers'])}, repaired "
        f"{sum(p['repaired'] for p in peer_fleet['peers'])}",
    ]
    for line in lines:
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({
        "runs": runs, "ratio": ratio, "delays_flat_out": delays_flat, "delay_light": delay_light,
        "bulk": {"held": held, "adopted": adopted, "pull_to_synced_ms": pulled, "adopted_s": adopted_in}}, indent=1))
    print(f"written: {out / 'fleet.json'}")
    return 0 if adopted >= held and delays_flat and all(d["flows"] for d in delays_flat) else 1


# Before the return path's replies are sent, the generator learns them
# (each flow's frame forwarded once): at most 3 s, well under 1 s with
# 10,000 flows.
LEARNING = 1.5


# The return path's cases: (key, where the replies arrive, Rialto's extra
# arguments, what it says). A sleeping worker handed frames is woken at
# once, or once within --handoff-wake-us (Rialto's default: 50).
HANDOFF_CASES = (
    ("same", "same", [], "none handed over"),
    ("other-at-once", "other", ["--handoff-wake-us", "0"], "every one handed over, its worker woken at once"),
    ("other", "other", [], "every one handed over, wakes put off (at most 50 us)"),
)


def handoff_bench(args):
    """The cost of handing replies over (issue 19, deliverable 4): Rialto
    with two workers, the generator sending its flows' replies (10,000
    flows, 64 B) so that every one arrives on its owner's queue, or every
    one on the other queue, its owner woken at once or with wakes put off;
    flat out (return packets/s), then at a fixed rate (CPU per return
    packet)."""
    rialto = next(s for s in SYSTEMS if s.name == "rialto")
    pps = {k: [] for k, *_ in HANDOFF_CASES}
    handed = {k: [] for k, *_ in HANDOFF_CASES}
    costs = {k: [] for k, *_ in HANDOFF_CASES}
    with tempfile.TemporaryDirectory(prefix="rialto-sbs.") as work, Testbed(2) as bed, bpf_stats():
        log(f"== the return path, 2 workers (cores {bed.cores()}), replies on the owner's queue or the other's")
        for _ in range(args.repeat):
            for key, q, run_args, _ in HANDOFF_CASES:
                with Device(rialto, bed, work, run_args=run_args) as device:
                    report = generate(bed, rialto, 64, 10_000, args.seconds, extra=["--replies", q])
                if report["mismatches"] or not report["ok"]:
                    log(f"error: replies {key}: {report['ok']} as expected, {report['mismatches']}")
                    return 1
                workers = device.summary["workers"]
                out = sum(w["handoff_out"] for w in workers)
                received = sum(w["rx_packets"] for w in workers)
                pps[key].append(report["median_rx_pps"])
                handed[key].append((out, received))
                log(f"  replies {key:13}: {report['median_rx_pps']:9,} packets/s back, {out:,} of "
                    f"{received:,} frames handed over")
        if args.cost_seconds:
            for _ in range(args.cost_repeat):
                for key, q, run_args, _ in HANDOFF_CASES:
                    costs[key].append(cost(bed, rialto, args.cost_rate, args.cost_seconds, work,
                                           extra=["--replies", q], lead=1.0 + LEARNING, run_args=run_args))
    print(f"The return path: Rialto, 2 workers, 10,000 flows, 64 B; the generator sends each flow's reply "
          f"from its backend (median of {args.repeat} runs of {args.seconds:g} s, interleaved)")
    for key, _, _, what in HANDOFF_CASES:
        out, received = handed[key][-1]
        print(f"  {what}: {statistics.median(pps[key]):,.0f} packets/s back to the clients "
              f"(runs: {', '.join(f'{p:,}' for p in pps[key])}); handed over: {out:,} of {received:,} frames "
              f"received (last run)")
    same = statistics.median(pps["same"])
    print(f"  return packets/s, every reply handed over / none: {statistics.median(pps['other']) / same:.2f} "
          f"(woken at once: {statistics.median(pps['other-at-once']) / same:.2f})")
    result = {"pps": pps, "handed": handed}
    if args.cost_seconds:
        med = {k: median_cost(k, costs[k]) for k, *_ in HANDOFF_CASES}
        print(f"CPU per return packet at {args.cost_rate:,} packets/s (the machine's; median of {args.cost_repeat} "
              f"runs of {args.cost_seconds:g} s):")
        for key, _, _, what in HANDOFF_CASES:
            print(f"  {what}: {med[key].busy:.0f} ns (Rialto's code {med[key].code:.0f})")
        a = med["same"]
        for key, label in (("other", "wakes put off"), ("other-at-once", "woken at once")):
            b = med[key]
            print(f"  a handed-over frame costs {b.busy - a.busy:.0f} ns more, {label} ({b.code - a.code:.0f} ns of "
                  f"it in Rialto's code); the pipeline's own code per packet: {a.code:.0f} ns")
        result["cost"] = {k: [c.__dict__ for c in costs[k]] for k, *_ in HANDOFF_CASES}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "handoff.json").write_text(json.dumps(result, indent=1))
    return 0


def fmt_delay(d):
    if not d.get("flows"):
        return "no flow counted"
    return f"p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms over {d['flows']:,} flows"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5, help="seconds measured per run (after 1 s of warmup)")
    p.add_argument("--repeat", type=int, help="runs per cell, interleaved; the table shows their median "
                   "(default 1; with --fleet or --handoff, 3)")
    p.add_argument("--out", default="target/side-by-side", help="directory for the markdown, PNG and JSON")
    p.add_argument("--only", nargs="+", choices=[s.name for s in SYSTEMS], help="run only these systems")
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--flows", nargs="+", type=int, default=list(FLOWS))
    p.add_argument("--workers", nargs="+", type=int, default=list(WORKERS))
    p.add_argument("--soak", type=float, metavar="MINUTES", help="soak Rialto this long instead")
    p.add_argument("--soak-rate", type=int, metavar="PPS", help="the soak's rate (default: 90%% of flat out)")
    p.add_argument("--zero-loss-steps", type=int, default=6, metavar="N",
                   help=f"trials of the zero-loss search per configuration of {', '.join(ZERO_LOSS)} (0: none)")
    p.add_argument("--cost-rate", type=int, default=100_000, metavar="PPS",
                   help="the offered rate of the CPU-per-packet measurement")
    p.add_argument("--cost-seconds", type=float, default=5, metavar="S",
                   help="the measurement per system of the CPU per packet (0: none)")
    p.add_argument("--cost-gather-us", type=int, default=50, metavar="US",
                   help="measure Rialto's CPU per packet once more with --rx-gather-us US (0: not)")
    p.add_argument("--cost-repeat", type=int, default=3, metavar="N",
                   help="runs per system of the CPU per packet, interleaved (the table shows their median)")
    p.add_argument("--handoff", action="store_true",
                   help="price handing replies over between workers instead (the return path)")
    p.add_argument("--fleet", action="store_true", help="price sharing flows across a fleet instead")
    p.add_argument("--fleet-flows", type=int, default=1_000_000, metavar="N",
                   help="the flows of the fleet's bulk sync (at most 1,032,192: 16 SNAT addresses)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the benchmark builds network namespaces: run it as root")
    preflight(args)
    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.fleet:
        sys.exit(fleet_bench(args))
    if args.handoff:
        args.repeat = args.repeat or 3
        sys.exit(handoff_bench(args))
    args.repeat = args.repeat or 1
    sys.exit(soak(args) if args.soak else side_by_side(args))


if __name__ == "__main__":
    main()
