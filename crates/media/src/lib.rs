//! # media
//!
//! callbridge's RTP/RTCP data plane: relay sockets, the forwarding loop, latching and counters.
//! It knows nothing of SIP or calls. The call engine (b2bua) decides which streams exist and on
//! which ports, and emits commands; the binary carries them out on a [`MediaDriver`] and feeds
//! the driver's counters back to the engine.
//!
//! ## Inputs
//!
//! - [`DriverConfig`]: where to bind, and how streams learn their legs' peers
//!   ([`LearningConfig`]: `heuristic` or `strict`, and the learning window).
//! - [`MediaDriver::open`]`(key, a_port, b_port, signalling)`: bind the A-facing pair
//!   (`a_port` RTP, `a_port + 1` RTCP; leg A sends there) and the B-facing pair, and start
//!   relaying; `signalling` ([`SignallingIps`]) is where each leg's SIP comes from.
//! - [`MediaDriver::set_remote`]`(key, leg, rtp, rtcp)`: where a leg receives, from its latest
//!   SDP. A changed address forgets what the leg learned.
//! - [`MediaDriver::close`]`(key)`: stop; the four ports are free when it returns.
//! - Datagrams, arriving on the sockets.
//!
//! ## Outputs
//!
//! - Forwarded datagrams, untouched, out of the socket of the same kind facing the other leg
//!   (symmetric RTP), to the learned source of that leg or else its SDP address. Packets from
//!   sources a leg has not learned (someone spraying the relay's ports) are neither relayed
//!   nor sent anything.
//! - [`StreamCounters`] per stream ([`MediaDriver::counters`], [`MediaDriver::all_counters`]):
//!   packets, bytes and drops (those for their source apart) per direction, the latched RTP
//!   sources, the time of the last
//!   valid packet (the engine's media-inactivity timer runs on it).
//!
//! ## Parts
//!
//! ```text
//!   binary ──open/set_remote/close──▶ MediaDriver ──counters──▶ binary ──▶ engine
//!                                         │ one task per stream
//!   leg A ──▶ A-facing RTP/RTCP ──▶ relay (tokio I/O) ──▶ B-facing RTP/RTCP ──▶ leg B
//!   leg A ◀──        sockets     ◀──    │     ▲       ◀──       sockets     ◀── leg B
//!                                       ▼     │ Verdict
//!                                    StreamState (sans-IO: validate, learn, choose, count)
//! ```
//!
//! - [`packet`]: RTP or RTCP, from the bytes ([`is_rtp`], [`is_rtcp`]).
//! - [`StreamState`]: the rules of one stream as a plain state machine: told each datagram
//!   (with `now` as an argument; no socket, no clock), it answers a [`Verdict`]. Learning
//!   rules (exact SDP address, same IP, the heuristic's provisional fallback), RFC 5761 muxed
//!   RTCP, drops: all unit-tested there. The learning policy is one function of it.
//! - The relay task (private): one per stream, a hand-written future polling its four
//!   sockets' read readiness, draining each into a per-thread buffer in batches of 64. It is
//!   thin, so another I/O backend could replace it around the same [`StreamState`].
//! - [`MediaDriver`]: the streams by key; binds (with raised kernel buffers), spawns, closes.
//!
//! IPv6: relay sockets bind on IPv6 as on IPv4, and on `::` dual-stack, where one stream may
//! bridge an IPv4 leg and an IPv6 leg. Addresses inside the stream logic are canonical (an
//! IPv4 peer is `a.b.c.d` even when a dual-stack socket reports `::ffff:a.b.c.d`), so that
//! latching compares them with the SDP and signalling addresses as they were written; the
//! relay maps each destination to its socket's family when it sends.
//!
//! ## Use
//!
//! ```no_run
//! use media::{DriverConfig, Leg, MediaDriver, SignallingIps};
//!
//! # async fn run() -> Result<(), media::OpenError> {
//! let mut driver = MediaDriver::new(DriverConfig::default(), tokio::runtime::Handle::current());
//! // The engine picked ports 30000/30001 (A-facing) and 30002/30003 (B-facing) for call 7's
//! // first stream, and wrote them into the SDP it sent to A and to B. A's INVITE came from
//! // a PBX at 192.0.2.10, B is reached through the trunk at 198.51.100.1.
//! let key = (7u64, 0u8);
//! let signalling = SignallingIps {
//!     a: Some("192.0.2.10".parse().unwrap()),
//!     b: Some("198.51.100.1".parse().unwrap()),
//! };
//! driver.open(key, 30000, 30002, signalling)?;
//! // A's offer, then B's answer.
//! driver.set_remote(key, Leg::A, Some("192.0.2.1:4000".parse().unwrap()), None);
//! driver.set_remote(key, Leg::B, Some("192.0.2.2:5000".parse().unwrap()), None);
//! // Once a second, back to the engine.
//! for (key, counters) in driver.all_counters() {
//!     println!("{key:?}: {} packets A to B, last at {:?}", counters.a_to_b.packets,
//!         counters.last_packet_at);
//! }
//! // The call ended: the ports can go back to the engine's pool at once.
//! driver.close(key);
//! # Ok(())
//! # }
//! ```

mod driver;
pub mod packet;
mod relay;
mod socket;
mod stream;

pub use driver::{DriverConfig, MediaDriver, OpenError};
pub use packet::{is_rtcp, is_rtp};
pub use stream::{
    DirectionCounters, DropReason, LearningConfig, LearningMode, Leg, SignallingIps, SocketKind,
    StreamCounters, StreamState, Verdict, REBIND_QUIET,
};
