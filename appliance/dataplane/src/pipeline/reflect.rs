//! Reflect mode: send every frame back where it came from.

use super::packet::{TCP, UDP};
use crate::{
    DropReason, Verdict,
    wire::{Layer, ethernet, ipv4, ipv6, ports::Ports},
};

/// Swaps Ethernet, IP and (for UDP and TCP) port source and destination.
///
/// Every checksum stays valid: swapping two fields leaves a ones'-complement
/// sum unchanged.
pub fn process(frame: &mut [u8]) -> Verdict {
    match swap(frame) {
        Ok(()) => Verdict::Tx,
        Err(verdict) => verdict,
    }
}

fn swap(frame: &mut [u8]) -> Result<(), Verdict> {
    let mut eth = ethernet::Frame::new_checked(frame)?;
    let ethertype = eth.ethertype();
    eth.swap_addresses();
    let (protocol, l4) = match ethertype {
        ethernet::ethertype::IPV4 => {
            let mut ip = ipv4::Packet::new_checked(eth.payload_mut())?;
            ip.swap_addresses();
            (ip.protocol(), ip.into_payload())
        }
        ethernet::ethertype::IPV6 => {
            let mut ip = ipv6::Packet::new_checked(eth.payload_mut())?;
            ip.swap_addresses();
            (ip.next_header(), ip.into_payload())
        }
        _ => return Err(Verdict::Drop(DropReason::NotIp)),
    };
    let layer = match protocol {
        TCP => Layer::Tcp,
        UDP => Layer::Udp,
        _ => return Ok(()),
    };
    Ports::new_checked(l4, layer)?.swap();
    Ok(())
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    fn udp4(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(PEER_MAC, NODE_MAC)
            .ipv4([198, 18, 0, 2], [198, 18, 100, 1], 64)
            .udp(40000, 7);
        let mut frame = Vec::new();
        builder.write(&mut frame, payload).unwrap();
        frame
    }

    #[test]
    fn reflects_udp4_with_valid_checksums() {
        let mut frame = udp4(b"hello");
        assert_eq!(process(&mut frame), Verdict::Tx);

        let expected = {
            let builder = PacketBuilder::ethernet2(NODE_MAC, PEER_MAC)
                .ipv4([198, 18, 100, 1], [198, 18, 0, 2], 64)
                .udp(7, 40000);
            let mut f = Vec::new();
            builder.write(&mut f, b"hello").unwrap();
            f
        };
        assert_eq!(frame, expected);
    }

    #[test]
    fn reflects_tcp6() {
        let src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let builder = PacketBuilder::ethernet2(PEER_MAC, NODE_MAC)
            .ipv6(src, dst, 64)
            .tcp(40000, 80, 1, 1024);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"GET /").unwrap();
        assert_eq!(process(&mut frame), Verdict::Tx);

        let packet = SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("TCP expected")
        };
        assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40000));
        assert_eq!(tcp.payload(), b"GET /");
    }

    #[test]
    fn drops_what_it_cannot_parse() {
        let frame = udp4(b"hello");
        let mut cut = frame[..30].to_vec();
        assert_eq!(process(&mut cut), Verdict::Drop(DropReason::MalformedIpv4));

        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(process(&mut arp), Verdict::Drop(DropReason::NotIp));
    }
}
