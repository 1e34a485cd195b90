//! The fast path: a packet of an established flow, or a SYN that opens
//! one, in the shape nearly all of them have, read at fixed offsets.
//!
//! The shape: untagged Ethernet; IPv4 without options, not a fragment, its
//! header checksum right, TTL above one; TCP or UDP, the header whole (a
//! SYN only to a VIP, not to a SNAT address too, without ACK or RST). It
//! comes from the uplink, or in VXLAN of that same outer shape from a
//! tunnel peer to Rialto's VTEP. Of such a packet, whose flow is found (or,
//! for a SYN, made: Maglev, a SNAT port, both keys indexed, as the general
//! path's `new_flow` does) and which leaves by the uplink or by a gateway's
//! [`Template`](super::Template), the fast path does what the general path
//! ([`Balancer::run`]) does, byte for byte and counter for counter, without
//! the general path's views, per-field bounds checks and branches for what
//! the packet is not; and a packet of that shape to another worker's SNAT
//! port it hands over, as the general path does, without parsing it twice.
//! Anything else (another shape; a packet the general path drops, punts or
//! answers; a SYN on a closing flow's 5-tuple, which the general path
//! closes and balances anew; a datagram of no flow) it leaves untouched to
//! the general path. A property test (`tests/fast_path.rs`) and the fuzz
//! corpus's replay run both ways and compare.
//!
//! A batch ([`Balancer::process_batch`]) is a software pipeline: it runs
//! the fast path's reading and checks over each frame some frames before
//! its turn, and starts reading the index entry its flow is filed at;
//! half way to its turn, that entry names the slot the flow is likely in,
//! which starts to be read too. The cache misses of a large table overlap
//! instead of coming one after another. Each frame's lookup then compares
//! the slot read ahead for it first, and searches the index only if that
//! slot no longer holds the flow (an earlier frame of the batch changed
//! it). The same property test checks that a batch does what its frames
//! do one at a time.

use super::{Balancer, Roles, seconds, template};
use crate::{
    DropReason, FrameBuf, Verdict,
    pipeline::{
        conntrack::{Direction, Filed, FlowKey, FlowMemory, Rewrite, Side, UPLINK},
        nat,
        packet::{TCP, UDP, mapped, v4},
        replica::Replica,
    },
    wire::{checksum, ethernet, ipv4, tcp::flags, udp, vxlan},
};

/// Offsets in a frame of the shape.
const IP: usize = ethernet::HEADER_LEN;
const L4: usize = IP + ipv4::HEADER_LEN;
const VXLAN: usize = L4 + udp::HEADER_LEN;
/// The inner IPv4 header of VXLAN in the shape.
const INNER_IP: usize = VXLAN + vxlan::HEADER_LEN + ethernet::HEADER_LEN;
/// The least a TCP header takes.
const TCP_HEADER: usize = 20;

/// The big-endian 16 bits at `at` of `d` (in bounds: the caller checked).
#[inline]
fn word(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

/// The IPv4 header of the shape at `at` of `d`, and its packet's total
/// length, if the packet ends by `end`. Its checksum is checked apart
/// ([`header_sums`]), last: a packet the fast path does not take leaves
/// sooner.
#[inline]
fn ipv4_at(d: &[u8], at: usize, end: usize) -> Option<(&[u8; ipv4::HEADER_LEN], usize)> {
    let h: &[u8; ipv4::HEADER_LEN] = d.get(at..at + ipv4::HEADER_LEN)?.try_into().ok()?;
    let total = usize::from(word(h, 2));
    // More fragments, or an offset: a fragment.
    let fragment = word(h, 6) & 0x3fff != 0;
    let whole = h[0] == 0x45 && total >= ipv4::HEADER_LEN && at + total <= end;
    (whole && !fragment).then_some((h, total))
}

/// Whether the IPv4 header at `at` of `d` (whole: [`ipv4_at`] said so)
/// has the right checksum (summed without swapping bytes).
#[inline]
fn header_sums(d: &[u8], at: usize) -> bool {
    d.get(at..at + ipv4::HEADER_LEN)
        .is_some_and(checksum::verifies_words)
}

/// Where a packet of the shape is and where it came from.
#[derive(Clone, Copy)]
struct Found {
    /// The IP header's offset in the frame.
    at: usize,
    /// Its total length.
    len: usize,
    side: Side,
    /// The VNI it came in on, or [`UPLINK`].
    vni: u32,
}

/// What the fast path makes of a frame before it looks up the flow.
#[derive(Clone, Copy)]
pub(super) enum Stage {
    /// Not the shape, or not for the fast path: the general path's.
    General,
    /// Decided already: handed over to the worker with the flow.
    Done(Verdict),
    /// Of the shape, its flow to be looked up.
    Lookup(Staged),
    /// A SYN of the shape to a VIP: its flow to be looked up, or made.
    Open(Staged),
}

/// A frame of the shape, read and checked; what the rest of the fast path
/// needs of it.
#[derive(Clone, Copy)]
pub(super) struct Staged {
    key: FlowKey,
    /// The key's hash if it may be a forward key (to a VIP), else 0: only
    /// the forward keys' index hashes.
    hash: u64,
    /// Where the IP packet is in the frame, and its length.
    at: u16,
    len: u16,
    tos: u8,
    tcp_flags: u8,
    /// Where it came from.
    side: Side,
    /// Which indexes the key may be in: to a VIP, the forward one; to a
    /// SNAT address, the reverse one.
    indexes: (bool, bool),
    /// The slot a batch read ahead for the flow (or, for a SYN, the flow
    /// just made), if any: the lookup compares it first, and searches no
    /// index if it holds the flow.
    candidate: Option<u32>,
}

/// Frames a batch stages ahead of the one it processes: each frame's index
/// entry starts to be read as it is staged, [`AHEAD`] frames before its
/// turn. Measured (`--bench pipeline`): 6 and 8 did worse at a million
/// flows; 20 and 28 within the noise of 12.
const AHEAD: usize = 12;

/// Frames before its turn that a frame's slot is guessed from its index
/// entry, and read ahead: half way, so that both reads have had as long.
const SLOT_AHEAD: usize = AHEAD / 2;

/// The stages a batch keeps: the frames staged and not yet processed, in a
/// ring indexed without division.
const RING: usize = (AHEAD + 1).next_power_of_two();

impl<S: FlowMemory> Balancer<S> {
    /// Processes a batch: what [`Balancer::process`] does to each frame in
    /// turn, but as a pipeline, so that the cache misses of a large flow
    /// table overlap instead of coming one after another (as VPP and DPDK
    /// prefetch). Each frame is staged [`AHEAD`] frames before its turn,
    /// and the index entry its flow is filed at starts to be read; half
    /// way ([`SLOT_AHEAD`]), that entry names the slot the flow is likely
    /// in, which starts to be read too; at its turn, the frame is
    /// processed, its lookup comparing that slot first. The lookups come in
    /// turn, and find what an earlier frame changed.
    pub fn process_batch(
        &mut self,
        frames: &mut [FrameBuf<'_>],
        verdicts: &mut [Verdict],
        now_ns: u64,
    ) {
        self.now_ns = now_ns;
        let now = seconds(now_ns);
        let guessed = self.read_ahead;
        let mut stages = [Stage::General; RING];
        let mut filed = [Filed::Nowhere; RING];
        for i in 0..frames.len() + AHEAD {
            if let Some(frame) = frames.get(i) {
                let stage = &mut stages[i % RING];
                self.stage(frame.data(), stage);
                if guessed && let Stage::Lookup(s) | Stage::Open(s) = stage {
                    filed[i % RING] = self.flows.filed(&s.key, s.hash, s.indexes);
                    self.flows.prefetch(filed[i % RING]);
                }
            }
            if guessed
                && let Some(j) = (i + SLOT_AHEAD).checked_sub(AHEAD)
                && j < frames.len()
                && let Stage::Lookup(s) | Stage::Open(s) = &mut stages[j % RING]
            {
                s.candidate = self.flows.candidate(filed[j % RING]);
                if let Some(id) = s.candidate {
                    self.flows.warm(id);
                }
            }
            if let Some(j) = i.checked_sub(AHEAD)
                && let (Some(frame), Some(verdict)) = (frames.get_mut(j), verdicts.get_mut(j))
            {
                let stage = &stages[j % RING];
                *verdict = if guessed {
                    self.complete::<true>(frame, stage, now)
                } else {
                    self.complete::<false>(frame, stage, now)
                };
            }
        }
    }

    /// What becomes of `frame`, staged as `stage`: the fast path's verdict,
    /// or the general path's. `GUESSED`: whether the stage may hold a slot
    /// read ahead (if not, the code that compares it is left out).
    #[inline]
    pub(super) fn complete<const GUESSED: bool>(
        &mut self,
        frame: &mut FrameBuf<'_>,
        stage: &Stage,
        now: u32,
    ) -> Verdict {
        self.fast::<GUESSED>(frame, stage, now)
            .unwrap_or_else(|| match self.run(frame, now) {
                Ok(verdict) | Err(verdict) => verdict,
            })
    }

    /// What the general path does with `frame`, staged as `stage`, if the
    /// fast path can do it; `None`, and the frame untouched, if not (the
    /// table may have changed: an expired flow removed, or a SYN's flow
    /// made; the general path then finds it as it would have made it).
    #[inline]
    pub(super) fn fast<const GUESSED: bool>(
        &mut self,
        frame: &mut FrameBuf<'_>,
        stage: &Stage,
        now: u32,
    ) -> Option<Verdict> {
        match stage {
            Stage::General => None,
            Stage::Done(verdict) => Some(*verdict),
            Stage::Lookup(staged) => self.finish::<GUESSED>(frame, staged, staged.candidate, now),
            Stage::Open(staged) => self.open(frame, staged, now),
        }
    }

    /// The fast path's reading and checks of frame `d`, up to the flow's
    /// lookup, which changes nothing: what [`Balancer::finish`] (or, for a
    /// SYN, [`Balancer::open`]) needs, written to `stage` (made where it
    /// is kept, not copied there).
    #[inline]
    pub(super) fn stage(&self, d: &[u8], stage: &mut Stage) {
        *stage = Stage::General;
        if self.fast_path && !self.tables.resetting {
            self.staged(d, stage);
        }
    }

    /// [`Balancer::stage`] of a frame the fast path may take: `None`, and
    /// `stage` left alone, if it may not after all.
    #[inline]
    fn staged(&self, d: &[u8], stage: &mut Stage) -> Option<()> {
        let found = self.shape(d)?;
        let h = &d[found.at..found.at + ipv4::HEADER_LEN];
        let (tos, ttl, proto) = (h[1], h[8], h[9]);
        let l4 = &d[found.at + ipv4::HEADER_LEN..found.at + found.len];
        let (src_port, dst_port, tcp_flags) = ports(l4, proto)?;
        let sums = header_sums(d, IP) && (found.at == IP || header_sums(d, found.at));
        if !sums {
            return None;
        }
        let src: [u8; 4] = h[12..16].try_into().ok()?;
        let dst: [u8; 4] = h[16..20].try_into().ok()?;
        // Martian sources: what `is_martian` says of IPv4 by the first byte.
        if ttl <= 1 || matches!(src[0], 0 | 127 | 224..) || self.roles.of_v4(src) & Roles::OWN != 0
        {
            return None;
        }
        let to = self.roles.of_v4(dst) & (Roles::VIP | Roles::SNAT);
        let snat = to & Roles::SNAT != 0;
        let check_answer = found.side != Side::UPLINK
            && (self.tables.check_ports).is_some_and(|(a, b)| (a..=b).contains(&dst_port));
        if to == 0 || (snat && check_answer) {
            return None;
        }
        // A SYN may open a connection: the fast path opens one to a VIP
        // alone, and leaves any other SYN to the general path.
        let syn = tcp_flags & flags::SYN != 0;
        // (`flags::valid` has refused a SYN with RST or FIN.)
        if syn && (to != Roles::VIP || tcp_flags & flags::ACK != 0) {
            return None;
        }
        let snat_ports = self.flows.snat();
        if snat && !snat_ports.owns(dst_port) {
            // Another worker's SNAT port: its flow is there, where the
            // frame goes as it came.
            *stage = Stage::Done(Verdict::Handoff(snat_ports.owner(dst_port)));
            return Some(());
        }
        let key = FlowKey {
            src: mapped(src),
            dst: mapped(dst),
            src_port,
            dst_port,
            proto,
            tunnel: found.vni,
            pad: [0; 3],
        };
        let vip = to & Roles::VIP != 0;
        let staged = Staged {
            // Only a forward key's is needed.
            hash: if vip { self.flows.hash(&key) } else { 0 },
            key,
            // 64 at most, and an IPv4 total length: both fit 16 bits.
            at: found.at as u16,
            len: found.len as u16,
            tos,
            tcp_flags,
            side: found.side,
            indexes: (vip, snat),
            candidate: None,
        };
        *stage = match syn {
            true => Stage::Open(staged),
            false => Stage::Lookup(staged),
        };
        Some(())
    }

    /// [`Balancer::finish`] for the SYN `staged` to a VIP, once its flow
    /// is found (the SYN sent again) or made: what the general path's
    /// `new_flow` makes of it, once it has checked what `staged` checked.
    /// `None`, and the frame untouched, for what the general path does
    /// otherwise: a SYN on a closing flow's 5-tuple (the old flow closed,
    /// the connection balanced anew), no service on the VIP's port, a
    /// service with no backend (nothing done but what the lookup does: an
    /// expired flow removed); and, once the flow is made, what `finish`
    /// leaves to it (too big, no template), where the general path finds
    /// the flow made, noted, and not yet touched, as its own `new_flow`
    /// would leave it. Apart, so that the established flows' path does not
    /// carry it; that path then takes the flow's slot as read ahead.
    #[inline(never)]
    fn open(&mut self, frame: &mut FrameBuf<'_>, staged: &Staged, now: u32) -> Option<Verdict> {
        let Staged { ref key, hash, .. } = *staged;
        let found = (self.flows).lookup_hashed(key, hash, now, staged.indexes, staged.candidate);
        let id = match found {
            Some((id, _)) if self.reopens(id, key.proto, staged.tcp_flags) => return None,
            Some((id, _)) => id,
            None => {
                let service = self.roles.service(&key.dst, key.dst_port, key.proto)?;
                match self.balance(key, false, service, staged.side, now)? {
                    Ok(id) => {
                        self.note(Replica::UP, id, now);
                        id
                    }
                    Err(verdict) => return Some(verdict),
                }
            }
        };
        // The flow's slot given, as a batch's read ahead: the lookup
        // compares it, and searches no index.
        self.finish::<true>(frame, staged, Some(id), now)
    }

    /// The rest of the fast path for the frame `staged`: the flow's
    /// lookup (comparing the slot `candidate` first, if `GUESSED`), the
    /// rewrite and the way out. `None`, and the frame untouched, if the
    /// general path must take it.
    #[inline]
    fn finish<const GUESSED: bool>(
        &mut self,
        frame: &mut FrameBuf<'_>,
        staged: &Staged,
        candidate: Option<u32>,
        now: u32,
    ) -> Option<Verdict> {
        let Staged {
            ref key,
            hash,
            tos,
            tcp_flags,
            indexes,
            ..
        } = *staged;
        let (proto, len) = (key.proto, usize::from(staged.len));
        let candidate = if GUESSED { candidate } else { None };
        let (id, direction) = self
            .flows
            .lookup_hashed(key, hash, now, indexes, candidate)?;
        let slot = self.flows.slot(id);
        let sums = match direction {
            Direction::Forward => slot.sums,
            Direction::Reply => slot.sums.reversed(),
        };
        let hash = u64::from(slot.hash);
        let Rewrite {
            to: out,
            src: (src, src_port),
            dst: (dst, dst_port),
        } = self.flows.names().rewrite(slot, direction)?;
        // No template: an IPv6 underlay. Too big: an ICMP error, or a drop.
        let template = match out.tunnel_of() {
            None => None,
            Some((cluster, gateway)) => {
                let template = template(&self.templates, cluster, gateway)?;
                let overhead = rialto_tables::vxlan_overhead(false);
                if len + overhead > usize::from(self.tables.node.mtu) {
                    return None;
                }
                Some(template)
            }
        };
        // From here on, what the general path does once it has the flow.
        let changed = self.flows.touch(id, proto, direction, tcp_flags, now);
        let start = frame.start();
        let at = start + usize::from(staged.at);
        let end = at + len;
        let (ip, l4) = frame.buffer_mut()[at..end].split_at_mut(ipv4::HEADER_LEN);
        nat::forward_v4_summed(
            ip,
            l4,
            proto,
            (v4(&src), src_port),
            (v4(&dst), dst_port),
            sums,
        );
        let ethertype = ethernet::ethertype::IPV4;
        let sent = match template {
            // Plain Ethernet, untagged, to the next hop.
            None if at >= ethernet::HEADER_LEN
                && frame.set_bounds(at - ethernet::HEADER_LEN, end) =>
            {
                let h = &mut frame.buffer_mut()[at - ethernet::HEADER_LEN..at];
                h[..6].copy_from_slice(&self.next_hop);
                h[6..12].copy_from_slice(&self.mac);
                h[12..].copy_from_slice(&ethertype.to_be_bytes());
                true
            }
            None => false,
            Some(template) => template.encapsulate(frame, at, end, ethertype, tos, hash),
        };
        if changed && self.changes.is_some() {
            self.note(Replica::UP, id, now);
        }
        if !sent {
            return Some(Verdict::Drop(DropReason::NoHeadroom));
        }
        match direction {
            Direction::Forward => self.counters.forward += 1,
            Direction::Reply => self.counters.reply += 1,
        }
        Some(Verdict::Tx)
    }

    /// Where the IPv4 packet of the shape is in frame `d`: right after the
    /// Ethernet header, or inside VXLAN from a tunnel peer to Rialto's VTEP.
    #[inline]
    fn shape(&self, d: &[u8]) -> Option<Found> {
        if word(d.get(..IP)?, 12) != ethernet::ethertype::IPV4 {
            return None;
        }
        let (outer, len) = ipv4_at(d, IP, d.len())?;
        let vxlan_port = self.tables.node.vxlan_port;
        if outer[9] != UDP || word(d.get(..L4 + udp::HEADER_LEN)?, L4 + 2) != vxlan_port {
            return Some(Found {
                at: IP,
                len,
                side: Side::UPLINK,
                vni: UPLINK,
            });
        }
        let to_vtep = self.roles.of_v4(outer[16..20].try_into().ok()?) & Roles::VTEP != 0;
        let (cluster, gateway) = self.roles.peer_v4(outer[12..16].try_into().ok()?)?;
        let udp_len = usize::from(word(d, L4 + 4));
        let end = L4 + udp_len;
        if !to_vtep || udp_len < INNER_IP - L4 || end > IP + len {
            return None;
        }
        let vni = u32::from_be_bytes([0, d[VXLAN + 4], d[VXLAN + 5], d[VXLAN + 6]]);
        let c = &self.tables.clusters[usize::from(cluster)];
        if d[VXLAN] & vxlan::FLAG_I == 0 || vni != c.vni {
            return None;
        }
        if word(d, INNER_IP - 2) != ethernet::ethertype::IPV4 {
            return None;
        }
        let (_, len) = ipv4_at(d, INNER_IP, end)?;
        Some(Found {
            at: INNER_IP,
            len,
            side: Side::tunnel(cluster, gateway),
            vni,
        })
    }
}

/// The ports and TCP control bits of the whole TCP or UDP header `l4` (up
/// to the IP packet's end): `None` for anything else.
#[inline]
fn ports(l4: &[u8], proto: u8) -> Option<(u16, u16, u8)> {
    match proto {
        TCP if l4.len() >= TCP_HEADER => {
            let header = usize::from(l4[12] >> 4) * 4;
            let bits = l4[13];
            let ok = header >= TCP_HEADER && header <= l4.len() && flags::valid(bits);
            ok.then(|| (word(l4, 0), word(l4, 2), bits))
        }
        UDP if l4.len() >= udp::HEADER_LEN => {
            let len = usize::from(word(l4, 4));
            (udp::HEADER_LEN..=l4.len())
                .contains(&len)
                .then(|| (word(l4, 0), word(l4, 2), 0))
        }
        _ => None,
    }
}
