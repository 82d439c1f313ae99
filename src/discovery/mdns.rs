//! mDNS (DNS-SD) with mdns-sd: the orchestrator's advert and the worker's browse.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use super::{Advert, Discovery, DiscoveryError, SERVICE_TYPE};
use crate::providers::BoxFuture;

fn err(e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Mdns(e.to_string())
}

/// A daemon on every non-loopback interface, or only on `interfaces`.
fn daemon(interfaces: &[String]) -> Result<ServiceDaemon, DiscoveryError> {
    let d = ServiceDaemon::new().map_err(err)?;
    if interfaces.is_empty() {
        d.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(err)?;
    } else {
        d.disable_interface(IfKind::All).map_err(err)?;
        let names: Vec<IfKind> = interfaces.iter().map(|n| IfKind::Name(n.clone())).collect();
        d.enable_interface(names).map_err(err)?;
    }
    Ok(d)
}

/// Time allowed after the first matching answer for more addresses of the
/// same orchestrator (mdns-sd may report an IPv6 link-local address first and
/// IPv4 tens of milliseconds later).
const SETTLE: Duration = Duration::from_millis(60);

/// Browses `_d8._udp.local.`.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MdnsDiscovery")
    }
}

impl MdnsDiscovery {
    /// Starts mDNS on every non-loopback interface, or only on `interfaces`.
    pub fn new(interfaces: &[String]) -> Result<Self, DiscoveryError> {
        Ok(MdnsDiscovery {
            daemon: daemon(interfaces)?,
        })
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Reads an advert from a resolved service; `None` if it is not a d8 one.
fn parse(r: &mdns_sd::ResolvedService) -> Option<Advert> {
    let prop = |k: &str| r.get_property_val_str(k).map(str::to_owned);
    Some(Advert {
        name: prop("name").unwrap_or_else(|| r.fullname.clone()),
        cluster_id: prop("cid")?,
        proto: prop("proto")?.parse().ok()?,
        version: prop("ver").unwrap_or_default(),
        quic_port: prop("quic").and_then(|p| p.parse().ok()).unwrap_or(r.port),
        http_port: prop("http").and_then(|p| p.parse().ok()).unwrap_or(r.port),
        addrs: r
            .addresses
            .iter()
            .map(mdns_sd::ScopedIp::to_ip_addr)
            .collect(),
    })
}

fn routable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

impl Discovery for MdnsDiscovery {
    fn discover<'a>(
        &'a self,
        cluster: Option<&'a str>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Advert>, DiscoveryError>> {
        Box::pin(async move {
            let rx = self.daemon.browse(SERVICE_TYPE).map_err(err)?;
            let deadline = tokio::time::Instant::now() + wait;
            let mut settle: Option<tokio::time::Instant> = None;
            let mut found: BTreeMap<String, Advert> = BTreeMap::new();
            loop {
                let until = settle.map_or(deadline, |s| s.min(deadline));
                let event = match tokio::time::timeout_at(until, rx.recv_async()).await {
                    Ok(Ok(e)) => e,
                    Ok(Err(_)) | Err(_) => break,
                };
                match event {
                    ServiceEvent::ServiceResolved(r) => {
                        let Some(advert) = parse(&r) else { continue };
                        if cluster.is_some_and(|c| c != advert.cluster_id) {
                            continue;
                        }
                        let entry = found
                            .entry(r.fullname.clone())
                            .or_insert_with(|| advert.clone());
                        for ip in advert.addrs {
                            if !entry.addrs.contains(&ip) {
                                entry.addrs.push(ip);
                            }
                        }
                        entry.quic_port = advert.quic_port;
                        entry.http_port = advert.http_port;
                        if cluster.is_some() && settle.is_none() && entry.addrs.iter().any(routable)
                        {
                            settle = Some(tokio::time::Instant::now() + SETTLE);
                        }
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        found.remove(&fullname);
                    }
                    _ => {}
                }
            }
            let _ = self.daemon.stop_browse(SERVICE_TYPE);
            Ok(found.into_values().collect())
        })
    }
}

/// What the orchestrator announces.
#[derive(Debug, Clone)]
pub struct AdvertSpec {
    /// Instance name; unique per orchestrator.
    pub name: String,
    /// Cluster id.
    pub cluster_id: String,
    /// QUIC port.
    pub quic_port: u16,
    /// HTTP port.
    pub http_port: u16,
}

/// The orchestrator's mDNS registration; unregistered by [`Advertiser::stop`] or on drop.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advertiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertiser")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Advertiser {
    /// Registers `spec` on every non-loopback interface, or only on
    /// `interfaces`. Addresses follow the interfaces (they are filled in and
    /// updated by mdns-sd), so a new IP is announced without a restart.
    pub fn start(interfaces: &[String], spec: &AdvertSpec) -> Result<Self, DiscoveryError> {
        let daemon = daemon(interfaces)?;
        let host = format!("{}.local.", spec.name);
        let props = [
            ("proto", crate::wire::PROTOCOL_VERSION.to_string()),
            ("quic", spec.quic_port.to_string()),
            ("http", spec.http_port.to_string()),
            ("cid", spec.cluster_id.clone()),
            ("name", spec.name.clone()),
            ("ver", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &spec.name,
            &host,
            "",
            spec.quic_port,
            &props[..],
        )
        .map_err(err)?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(err)?;
        Ok(Advertiser { daemon, fullname })
    }

    /// Unregisters (sending the goodbye) and stops the daemon.
    pub fn stop(self) {
        // Drop does the work; this names the intent at call sites.
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(Duration::from_millis(500));
        }
        let _ = self.daemon.shutdown();
    }
}
