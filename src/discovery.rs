//! Finding the orchestrator on the LAN.
//!
//! Who owns what:
//! - [`Discovery`]: "which orchestrators can I see?"; [`MdnsDiscovery`]
//!   browses `_d8._udp.local.` with mdns-sd, [`StaticDiscovery`] answers from
//!   memory (unit tests, and an address given on the command line).
//! - [`Advertiser`]: `d8 serve`'s mDNS registration, removed on drop.
//! - [`order_addrs`]: which of an orchestrator's addresses to try first.
//!
//! An advert's TXT record carries the protocol version, the QUIC and HTTP
//! ports, the orchestrator's name and a cluster id (the first 8 bytes of the
//! CA digest, hex): a worker only considers adverts whose cluster id matches
//! its token, so two clusters on one LAN never mix.

mod mdns;
mod order;

pub use mdns::{AdvertSpec, Advertiser, MdnsDiscovery};
pub use order::{LocalAddr, is_virtual_interface, local_addrs, order_addrs};

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::providers::BoxFuture;

/// The DNS-SD service type d8 registers.
pub const SERVICE_TYPE: &str = "_d8._udp.local.";

/// One orchestrator as seen on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Instance name (unique per orchestrator).
    pub name: String,
    /// Cluster id: first 8 bytes of the CA digest, hex.
    pub cluster_id: String,
    /// Protocol version it speaks.
    pub proto: u16,
    /// d8 version.
    pub version: String,
    /// QUIC port.
    pub quic_port: u16,
    /// HTTP port.
    pub http_port: u16,
    /// Addresses it announced.
    pub addrs: Vec<IpAddr>,
}

impl Advert {
    /// The JSON of `d8 find --json`: the advert, and its dashboard and
    /// OpenAI URLs on the address best reached from here (`local`: this
    /// machine's addresses; link-local IPv6 is never used for a URL).
    pub fn json(&self, local: &[LocalAddr]) -> serde_json::Value {
        let http = order_addrs(&self.addrs, local).first().map(|a| match a {
            IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.http_port),
            IpAddr::V4(v4) => format!("http://{v4}:{}", self.http_port),
        });
        serde_json::json!({
            "name": self.name,
            "cluster_id": self.cluster_id,
            "version": self.version,
            "proto": self.proto,
            "addrs": self.addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
            "quic_port": self.quic_port,
            "http_port": self.http_port,
            "dashboard": http.as_ref().map(|u| format!("{u}/")),
            "openai_base_url": http.map(|u| format!("{u}/v1")),
        })
    }
}

/// The cluster id for a CA digest.
pub fn cluster_id(ca_digest: &[u8; 32]) -> String {
    hex::encode(&ca_digest[..8])
}

/// Discovery failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// mDNS could not be started or used.
    #[error("mDNS: {0}")]
    Mdns(String),
}

/// Finds orchestrators.
pub trait Discovery: Send + Sync + 'static {
    /// Orchestrators seen within `wait`. With `cluster`, returns as soon as
    /// one of that cluster is seen (after a short settle for late addresses)
    /// and only adverts of that cluster; without, everything seen in `wait`.
    fn discover<'a>(
        &'a self,
        cluster: Option<&'a str>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Advert>, DiscoveryError>>;

    /// No lookups are wanted for now (the worker is connected): stop any
    /// background querying. The next `discover` resumes it.
    fn idle(&self) {}
}

/// Discovery from a fixed, replaceable list.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    adverts: Mutex<Vec<Advert>>,
}

impl StaticDiscovery {
    /// A list of adverts.
    pub fn new(adverts: Vec<Advert>) -> Self {
        StaticDiscovery {
            adverts: Mutex::new(adverts),
        }
    }

    /// Replaces the list (an orchestrator moved).
    pub fn set(&self, adverts: Vec<Advert>) {
        *self.adverts.lock().unwrap_or_else(|p| p.into_inner()) = adverts;
    }
}

impl Discovery for StaticDiscovery {
    fn discover<'a>(
        &'a self,
        cluster: Option<&'a str>,
        _wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Advert>, DiscoveryError>> {
        let all = self
            .adverts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            Ok(all
                .into_iter()
                .filter(|a| cluster.is_none_or(|c| a.cluster_id == c))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert(name: &str, cid: &str) -> Advert {
        Advert {
            name: name.into(),
            cluster_id: cid.into(),
            proto: 1,
            version: "0.1.0".into(),
            quic_port: 5000,
            http_port: 5000,
            addrs: vec!["192.168.1.10".parse().expect("ip")],
        }
    }

    #[tokio::test]
    async fn static_discovery_filters_by_cluster() {
        let d = StaticDiscovery::new(vec![advert("a", "aaaa"), advert("b", "bbbb")]);
        let found = d.discover(Some("bbbb"), Duration::ZERO).await.expect("ok");
        assert_eq!(
            found.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(d.discover(None, Duration::ZERO).await.expect("ok").len(), 2);
        d.set(vec![]);
        assert!(
            d.discover(Some("bbbb"), Duration::ZERO)
                .await
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn cluster_id_is_a_digest_prefix() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        assert_eq!(cluster_id(&digest), "ab00000000000000");
    }
}
