//! The names edge nodes advertise their device service under (DNS-SD over mDNS) and devices
//! browse for. The advertising side is `edge_node::device::mdns`.

/// The DNS-SD service type of the device service.
pub const SERVICE_TYPE: &str = "_otamesh-dev._udp.local.";

/// The `v` TXT value of this version of the advertisement.
pub const TXT_VERSION: &str = "1";
