//! Binding one RTP/RTCP socket pair, with raised kernel buffers.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::OpenError;

/// Binds `ip:port` (RTP) and `ip:port+1` (RTCP), non-blocking, and asks the kernel for
/// `buffer_bytes` of receive and send buffer on each: the default (212,992 bytes) drops bursts
/// when the relay task is late (ARCHITECTURE.md, "Media facts"). The kernel may grant less (it
/// caps at `net.core.rmem_max`); that is not an error, the socket only drops earlier under a
/// burst. On error nothing stays bound.
pub(crate) fn bind_pair(
    ip: IpAddr,
    port: u16,
    buffer_bytes: usize,
) -> Result<(UdpSocket, UdpSocket), OpenError> {
    let rtcp_port = port.checked_add(1).ok_or_else(|| OpenError::Bind {
        port,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an RTP port needs the next port for RTCP",
        ),
    })?;
    let rtp = bind_one(ip, port, buffer_bytes)?;
    let rtcp = bind_one(ip, rtcp_port, buffer_bytes)?;
    Ok((rtp, rtcp))
}

fn bind_one(ip: IpAddr, port: u16, buffer_bytes: usize) -> Result<UdpSocket, OpenError> {
    let bind = |source| OpenError::Bind { port, source };
    let socket = UdpSocket::bind(SocketAddr::new(ip, port)).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    let raw = socket2::SockRef::from(&socket);
    // Best effort (see above).
    let _ = raw.set_recv_buffer_size(buffer_bytes);
    let _ = raw.set_send_buffer_size(buffer_bytes);
    Ok(socket)
}
