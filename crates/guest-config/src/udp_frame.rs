//! The UDP relay's wire format, spoken between the host's port agent and `rmachine-init
//! udp-relay PORT` in the guest over one SSH exec channel (its stdin and stdout).
//!
//! SSH carries byte streams only, so each datagram travels as one frame: a 4-byte big-endian
//! flow id, a 2-byte big-endian payload length, then the payload. A flow is one client address
//! on the host side; the guest gives each flow its own UDP socket towards the container's port,
//! so replies find their way back to the client that caused them (as the engine's own userland
//! UDP proxy does). The codec is sans-IO so both ends can drive it from any reader.

/// Bytes in a frame header: flow id (4) and payload length (2).
pub const HEADER_LEN: usize = 6;

/// The largest UDP payload over IPv4, and so the largest frame payload.
pub const MAX_DATAGRAM: usize = 65507;

/// A frame for `payload` of `flow`; payloads longer than [`MAX_DATAGRAM`] are truncated (no
/// datagram that long can have been received).
pub fn encode(flow: u32, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(MAX_DATAGRAM)];
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&flow.to_be_bytes());
    // The slice above is at most MAX_DATAGRAM (< u16::MAX) long.
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Collects stream bytes and yields whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame (flow id, payload), if the buffer holds one.
    pub fn next_frame(&mut self) -> Option<(u32, Vec<u8>)> {
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let flow = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let len = usize::from(u16::from_be_bytes([self.buf[4], self.buf[5]]));
        if self.buf.len() < HEADER_LEN + len {
            return None;
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Some((flow, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let mut stream = encode(7, b"hello");
        stream.extend(encode(u32::MAX, b""));
        stream.extend(encode(1, &[0xAB; 1000]));
        for cut in 0..stream.len() {
            let mut decoder = FrameDecoder::default();
            let mut frames = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame() {
                    frames.push(frame);
                }
            }
            assert_eq!(
                frames,
                vec![
                    (7, b"hello".to_vec()),
                    (u32::MAX, Vec::new()),
                    (1, vec![0xAB; 1000])
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_header_is_flow_then_length_big_endian() {
        assert_eq!(encode(0x0102_0304, b"xy"), [1, 2, 3, 4, 0, 2, b'x', b'y']);
    }
}
