//! Telling RTP from RTCP from anything else, on the bytes alone.
//!
//! The relay forwards packets untouched; it looks at them only to refuse what is not media
//! (scanners, garbage, misdirected traffic) and to decide what may latch a leg's address.

use rtp_rs::RtpReader;

/// Is this an RTCP (compound) packet: at least 8 bytes, version 2 and a first packet type of
/// SR, RR, SDES, BYE or APP (200–204)?
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (200..=204).contains(&packet[1])
}

/// Is this an RTP packet with a sane header (rtp-rs: version 2, CSRCs, extension and padding
/// within the datagram)? An RTCP packet can pass this too (RFC 5761 §4): ask [`is_rtcp`] first.
pub fn is_rtp(packet: &[u8]) -> bool {
    RtpReader::new(packet).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rtp_and_rtcp() {
        let mut rtp = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
        rtp.extend_from_slice(&[0xff; 160]);
        assert!(is_rtp(&rtp) && !is_rtcp(&rtp));
        let rr = [0x80, 201, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        assert!(is_rtcp(&rr));
        assert!(!is_rtcp(&rr[..7]));
        assert!(!is_rtp(b"hello world, not rtp"));
        assert!(!is_rtcp(b"\x40\xc8\x00\x01abcd")); // version 1
        assert!(!is_rtp(&[0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])); // 15 CSRCs announced
        assert!(!is_rtcp(&[0x80, 199, 0, 1, 0, 0, 0, 0]));
        assert!(!is_rtcp(&[0x80, 205, 0, 1, 0, 0, 0, 0]));
    }
}
