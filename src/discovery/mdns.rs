//! mDNS (DNS-SD) with mdns-sd: the orchestrator's advert and the worker's browse.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
const SETTLE: Duration = Duration::from_millis(20);

/// What the browse thread has seen so far, by service full name.
#[derive(Default)]
struct Seen {
    adverts: Mutex<BTreeMap<String, Advert>>,
    changed: tokio::sync::Notify,
}

/// Browses `_d8._udp.local.` while a lookup is wanted: from the first
/// [`Discovery::discover`] until [`Discovery::idle`] (a connected worker goes
/// idle, so a LAN full of workers does not keep querying). While browsing,
/// lookups answer at once from what is already known, and a moved or
/// restarted orchestrator is noticed as soon as it announces itself.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    seen: Arc<Seen>,
    browsing: Mutex<bool>,
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
            seen: Arc::new(Seen::default()),
            browsing: Mutex::new(false),
        })
    }

    /// Starts browsing unless already browsing. What was known from an
    /// earlier browse is dropped: it may be stale by now.
    fn ensure_browsing(&self) -> Result<(), DiscoveryError> {
        let mut browsing = self.browsing.lock().unwrap_or_else(|p| p.into_inner());
        if *browsing {
            return Ok(());
        }
        self.seen
            .adverts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let rx = self.daemon.browse(SERVICE_TYPE).map_err(err)?;
        let sink = self.seen.clone();
        std::thread::Builder::new()
            .name("d8-mdns-browse".into())
            .spawn(move || {
                // Ends when the browse stops and mdns-sd closes the channel.
                while let Ok(event) = rx.recv() {
                    let mut map = sink.adverts.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        ServiceEvent::ServiceResolved(r) => {
                            if let Some(a) = parse(&r) {
                                // Each resolution carries the full current address set.
                                map.insert(r.fullname.clone(), a);
                            }
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            map.remove(&fullname);
                        }
                        ServiceEvent::SearchStopped(_) => break,
                        _ => continue,
                    }
                    drop(map);
                    sink.changed.notify_waiters();
                }
            })
            .map_err(err)?;
        *browsing = true;
        Ok(())
    }

    fn matching(&self, cluster: Option<&str>) -> Vec<Advert> {
        self.seen
            .adverts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|a| cluster.is_none_or(|c| a.cluster_id == c))
            .cloned()
            .collect()
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
            self.ensure_browsing()?;
            let deadline = tokio::time::Instant::now() + wait;
            let known = self.matching(cluster);
            if cluster.is_some() && known.iter().any(|a| a.addrs.iter().any(routable)) {
                // Already resolved earlier: its addresses have settled.
                return Ok(known);
            }
            let mut settle: Option<tokio::time::Instant> = None;
            loop {
                // Register for wake-ups before looking, so no change is missed.
                let changed = self.seen.changed.notified();
                let now = self.matching(cluster);
                if cluster.is_some()
                    && settle.is_none()
                    && now.iter().any(|a| a.addrs.iter().any(routable))
                {
                    settle = Some(tokio::time::Instant::now() + SETTLE);
                }
                let until = settle.map_or(deadline, |s| s.min(deadline));
                if tokio::time::Instant::now() >= until {
                    return Ok(now);
                }
                let _ = tokio::time::timeout_at(until, changed).await;
            }
        })
    }

    fn idle(&self) {
        let mut browsing = self.browsing.lock().unwrap_or_else(|p| p.into_inner());
        if *browsing {
            let _ = self.daemon.stop_browse(SERVICE_TYPE);
            *browsing = false;
        }
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
