//! The discrete-event core: virtual time, an ordered event queue, and flow-level links.

pub mod flows;
pub mod queue;

pub use flows::{Ended, FlowId, LinkId, Network};
pub use queue::{EventQueue, Micros};

/// Microseconds in a second.
pub const SECOND: Micros = 1_000_000;

/// Seconds (as scenarios write them) to microseconds, saturating.
pub fn secs(s: f64) -> Micros {
    if s.is_finite() && s > 0.0 {
        (s * 1e6).min(u64::MAX as f64 / 2.0) as Micros
    } else {
        0
    }
}

/// Megabits per second to bytes per second.
pub fn mbps(mbit: f64) -> f64 {
    mbit * 1e6 / 8.0
}

/// The steady-state rate of a loss-limited TCP/QUIC flow (Mathis et al.: MSS / RTT ×
/// 1.22 / sqrt(p)), bytes per second; infinite without loss. Real stacks (CUBIC, BBR) do
/// better, so this overstates the harm of loss, which suits a pessimistic simulator.
pub fn loss_cap(loss: f64, rtt: Micros) -> f64 {
    const MSS_BYTES: f64 = 1200.0; // QUIC's conservative datagram size
    if loss <= 0.0 {
        return f64::INFINITY;
    }
    let rtt_s = (rtt.max(100) as f64) / 1e6;
    MSS_BYTES / rtt_s * 1.22 / loss.sqrt()
}
