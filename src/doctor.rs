//! `d8 doctor`: explains why a worker cannot find or reach its orchestrator.
//!
//! It lists the interfaces and addresses discovery would use (with multicast
//! status), browses mDNS for a few seconds and lists every orchestrator seen,
//! probes each address with a real QUIC handshake (which also reveals the
//! orchestrator's CA, to compare with the token), reads the orchestrator's
//! clock from `/health`, and ends with a verdict and the next step. Exit
//! status 0 when a worker with this token would connect, 1 otherwise.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use d8_certs::tls::{self, ProbeSeen};
use d8_certs::{JoinToken, ORCHESTRATOR_NAME, fingerprint, pem_to_der};

use crate::cli::{DEFAULT_PORT, DoctorArgs};
use crate::config::parse_orchestrator_addr;
use crate::discovery::{self, Advert, Discovery, MdnsDiscovery};
use crate::transport;

/// Multicast readiness of an interface, where the OS tells us.
fn interface_flags(name: &str) -> Option<(bool, bool)> {
    #[cfg(target_os = "linux")]
    {
        let raw = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
        let flags = u32::from_str_radix(raw.trim().trim_start_matches("0x"), 16).ok()?;
        // IFF_UP = 0x1, IFF_MULTICAST = 0x1000.
        Some((flags & 0x1 != 0, flags & 0x1000 != 0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        None
    }
}

/// The cluster the worker would join: the token's, else the enrolled one.
fn wanted_cluster(args: &DoctorArgs) -> anyhow::Result<Option<(String, &'static str)>> {
    if let Some(t) = &args.token {
        let t = JoinToken::parse(t)?;
        return Ok(Some((discovery::cluster_id(&t.ca_digest()), "your token")));
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::node::files::default_data_dir("worker"));
    let Ok(pem) = std::fs::read_to_string(dir.join(crate::node::files::CA_CERT)) else {
        return Ok(None);
    };
    let der = pem_to_der(&pem, "CA certificate")?;
    Ok(Some((
        discovery::cluster_id(&fingerprint(&der)),
        "this worker's enrollment",
    )))
}

/// Result of probing one address.
struct Probe {
    /// How long the handshake took, or why it failed (for the report).
    handshake: anyhow::Result<Duration>,
    cluster: Option<String>,
    skew_ms: Option<i64>,
}

async fn probe(addr: SocketAddr, http_port: u16) -> Probe {
    let seen = ProbeSeen::default();
    let handshake = async {
        let cfg = tls::probe_client_config(seen.clone())?;
        let client = transport::client_config(cfg, Duration::from_secs(3))?;
        let endpoint = transport::client_endpoint(addr)?;
        let t0 = Instant::now();
        let connecting = endpoint.connect_with(client, addr, ORCHESTRATOR_NAME)?;
        let conn = tokio::time::timeout(Duration::from_secs(3), connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 3 s"))?
            .map_err(|e| anyhow::anyhow!(transport::explain(&e)))?;
        let took = t0.elapsed();
        conn.close(transport::close::NORMAL, b"d8 doctor probe");
        let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        Ok::<Duration, anyhow::Error>(took)
    }
    .await;
    let cluster = seen.chain().last().map(discovery::cluster_id);
    let skew_ms = if handshake.is_ok() {
        clock_skew(SocketAddr::new(addr.ip(), http_port)).await
    } else {
        None
    };
    Probe {
        handshake,
        cluster,
        skew_ms,
    }
}

/// Orchestrator clock minus ours, from `/health`, corrected for half the round trip.
async fn clock_skew(http: SocketAddr) -> Option<i64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let before = crate::node::now_millis().0;
    let v: serde_json::Value = client
        .get(format!("http://{http}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let after = crate::node::now_millis().0;
    let theirs = v["time"].as_u64()?;
    let mid = before + (after - before) / 2;
    Some(i64::try_from(theirs).ok()? - i64::try_from(mid).ok()?)
}

/// Runs the checks; prints the report; returns whether all is well.
pub async fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    crate::ensure_crypto_provider();
    let mut out = String::new();
    let wanted = wanted_cluster(&args)?;
    let _ = writeln!(out, "d8 doctor {}\n", env!("CARGO_PKG_VERSION"));
    match &wanted {
        Some((cid, from)) => {
            let _ = writeln!(out, "Cluster wanted: {cid} (from {from})");
        }
        None => {
            let _ = writeln!(
                out,
                "Cluster wanted: unknown (no --token and not enrolled): any orchestrator counts"
            );
        }
    }

    // 1. Interfaces.
    let _ = writeln!(out, "\nInterfaces considered:");
    let local = discovery::local_addrs(&args.mdns.interfaces);
    let mut multicast_ok = 0;
    let mut names: Vec<&str> = local.iter().map(|l| l.interface.as_str()).collect();
    names.dedup();
    for name in names {
        let addrs: Vec<String> = local
            .iter()
            .filter(|l| l.interface == name)
            .map(|l| format!("{}/{}", l.ip, l.prefix))
            .collect();
        let status = match interface_flags(name) {
            Some((true, true)) => {
                multicast_ok += 1;
                "up, multicast".to_owned()
            }
            Some((up, mc)) => format!(
                "{}{}",
                if up { "up" } else { "DOWN" },
                if mc { "" } else { ", NO multicast" }
            ),
            None => {
                multicast_ok += 1;
                "multicast status unknown on this OS".to_owned()
            }
        };
        let note = if discovery::is_virtual_interface(name) {
            "  (virtual: its addresses are tried last)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {name:<16} {:<40} {status}{note}", addrs.join(", "));
    }
    if local.is_empty() {
        let _ = writeln!(out, "  (none: this machine has no usable network address)");
    }

    // 2. Orchestrators.
    let adverts: Vec<Advert> = if let Some(a) = &args.addr {
        let addr = parse_orchestrator_addr(a, DEFAULT_PORT).map_err(anyhow::Error::msg)?;
        let _ = writeln!(out, "\nChecking the given address {addr} (mDNS skipped).");
        vec![Advert {
            name: a.clone(),
            cluster_id: String::new(),
            proto: crate::wire::PROTOCOL_VERSION,
            version: String::new(),
            quic_port: addr.port(),
            http_port: addr.port(),
            addrs: vec![addr.ip()],
        }]
    } else {
        let _ = writeln!(
            out,
            "\nOrchestrators seen over mDNS ({} s of listening):",
            args.wait.as_secs_f32()
        );
        let d = MdnsDiscovery::new(&args.mdns.interfaces)?;
        let t0 = Instant::now();
        let found = d.discover(None, args.wait).await?;
        if found.is_empty() {
            let _ = writeln!(out, "  none after {:.1} s", t0.elapsed().as_secs_f32());
        }
        found
    };

    let mut good: Option<String> = None;
    let mut other_cluster: Option<String> = None;
    let mut problems: Vec<String> = Vec::new();
    for a in &adverts {
        if !a.cluster_id.is_empty() {
            let _ = writeln!(
                out,
                "  {}  cluster {}  d8 {}  protocol {}  QUIC port {}  HTTP port {}",
                a.name, a.cluster_id, a.version, a.proto, a.quic_port, a.http_port
            );
        }
        let ordered = discovery::order_addrs(&a.addrs, &discovery::local_addrs(&[]));
        for ip in ordered {
            let addr = SocketAddr::new(ip, a.quic_port);
            let p = probe(addr, a.http_port).await;
            let cluster = p.cluster.clone().unwrap_or_else(|| a.cluster_id.clone());
            let matches = wanted.as_ref().is_none_or(|(w, _)| *w == cluster);
            match &p.handshake {
                Ok(took) => {
                    let _ = write!(
                        out,
                        "    {addr:<28} QUIC reachable ({} ms)",
                        took.as_millis()
                    );
                    if let Some((_, from)) = &wanted {
                        if matches {
                            let _ = write!(out, "; CA matches {from}");
                        } else {
                            let _ = write!(
                                out,
                                "; CA belongs to cluster {cluster}, NOT the one of {from}"
                            );
                            other_cluster.get_or_insert(cluster.clone());
                        }
                    }
                    if let Some(s) = p.skew_ms {
                        let _ = write!(out, "; clock {:+.1} s", s as f64 / 1_000.0);
                        if s.abs() > 300_000 {
                            problems.push(format!(
                                "the clocks of this machine and {addr} differ by {:.0} s: certificates do not care (valid 1975-4096), but task deadlines and log times will be off; enable NTP on both",
                                s as f64 / 1_000.0
                            ));
                        }
                    }
                    let _ = writeln!(out);
                    if matches && a.proto == crate::wire::PROTOCOL_VERSION && good.is_none() {
                        good = Some(format!("{} at {addr}", a.name));
                    } else if matches && a.proto != crate::wire::PROTOCOL_VERSION {
                        problems.push(format!(
                            "{} speaks protocol {} but this d8 speaks {}: install the same d8 version on both",
                            a.name,
                            a.proto,
                            crate::wire::PROTOCOL_VERSION
                        ));
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "    {addr:<28} NOT reachable: {e}");
                }
            }
        }
    }

    // 3. Verdict.
    let _ = writeln!(out);
    let ok = good.is_some();
    if let Some(g) = &good {
        let _ = writeln!(out, "Verdict: OK. A worker would connect to {g}.");
    } else if adverts.is_empty() {
        let why = if multicast_ok == 0 {
            "no interface here can send multicast, so mDNS cannot work from this machine"
        } else {
            "no orchestrator answered over mDNS"
        };
        let _ = writeln!(
            out,
            "Verdict: PROBLEM: {why}.\nNext steps: check that `d8 serve` is running (and not with --no-mdns); allow UDP 5353 (mDNS) on the orchestrator's firewall; make sure both machines are on the same LAN segment (mDNS does not cross routers, VLANs or VPNs such as Tailscale). Across those, give the address instead: d8 join HOST:5000."
        );
    } else if let Some((w, from)) = wanted.as_ref().filter(|(w, _)| {
        other_cluster.is_some()
            || !adverts
                .iter()
                .any(|a| a.cluster_id.is_empty() || a.cluster_id == *w)
    }) {
        let _ = writeln!(
            out,
            "Verdict: PROBLEM: orchestrators answered, but none belongs to cluster {w} ({from}).\nNext step: use the join token printed by *your* orchestrator's `d8 serve` (also in its <data-dir>/join-token)."
        );
    } else {
        let _ = writeln!(
            out,
            "Verdict: PROBLEM: the orchestrator was seen but no address of it answered on QUIC.\nNext steps: allow UDP {} on the orchestrator's firewall (QUIC), check that the addresses above are on a network this machine can reach, or give a reachable address: d8 join HOST:PORT.",
            adverts.first().map_or(DEFAULT_PORT, |a| a.quic_port)
        );
    }
    for p in &problems {
        let _ = writeln!(out, "Also: {p}");
    }
    crate::logging::say(&out);
    Ok(ok && problems.is_empty())
}
