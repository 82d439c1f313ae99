//! Which announced address to try first. The failure people hit with LAN
//! discovery is picking an address on the wrong network (docker0, a VPN, a
//! WSL adapter): same-subnet addresses on a real interface go first, virtual
//! and link-local ones last, and an address that is one of our own (the
//! classic twin `docker0` at 172.17.0.1) goes to the very end.

use std::net::{IpAddr, Ipv4Addr};

/// One address of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    /// Interface name.
    pub interface: String,
    /// Address.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

/// Name prefixes of interfaces that are usually virtual bridges, VPNs or
/// hypervisor adapters rather than the LAN.
const VIRTUAL_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "veth",
    "virbr",
    "vmnet",
    "vboxnet",
    "cni",
    "flannel",
    "podman",
    "lxc",
    "lxd",
    "zt",
    "tailscale",
    "wg",
    "utun",
    "tun",
    "tap",
    "vEthernet",
    "ham",
];

/// True for interface names that look virtual.
pub fn is_virtual_interface(name: &str) -> bool {
    VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// This machine's addresses, from every interface or only the named ones.
/// Loopback is included only when named.
pub fn local_addrs(only: &[String]) -> Vec<LocalAddr> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    ifaces
        .into_iter()
        .filter(|i| {
            if only.is_empty() {
                !i.is_loopback()
            } else {
                only.contains(&i.name)
            }
        })
        .map(|i| {
            let (ip, prefix) = match &i.addr {
                if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), a.prefixlen),
                if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), a.prefixlen),
            };
            LocalAddr {
                interface: i.name,
                ip,
                prefix,
            }
        })
        .collect()
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(a) & mask == u32::from(b) & mask
}

/// Docker's default bridge network.
fn is_docker_default(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 172 && ip.octets()[1] == 17
}

/// Lower is better.
fn rank(ip: IpAddr, local: &[LocalAddr]) -> u8 {
    if local.iter().any(|l| l.ip == ip) {
        return 9;
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                return 8;
            }
            let on_link = local.iter().find(|l| match l.ip {
                IpAddr::V4(mine) => same_subnet(mine, v4, l.prefix),
                IpAddr::V6(_) => false,
            });
            match on_link {
                Some(l) if !is_virtual_interface(&l.interface) && !v4.is_loopback() => 0,
                Some(_) => 6,
                None if is_docker_default(v4) => 7,
                None if v4.is_loopback() => 5,
                None => 2,
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unicast_link_local() || v6.is_unspecified() || v6.is_multicast() {
                8
            } else if v6.is_loopback() {
                5
            } else {
                3
            }
        }
    }
}

/// Orders an orchestrator's addresses for connecting; drops IPv6 link-local
/// addresses (unusable without a scope) and duplicates.
pub fn order_addrs(remote: &[IpAddr], local: &[LocalAddr]) -> Vec<IpAddr> {
    let mut out: Vec<(u8, IpAddr)> = remote
        .iter()
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|ip| (rank(*ip, local), *ip))
        .collect();
    out.sort();
    out.dedup();
    out.into_iter().map(|(_, ip)| ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(name: &str, ip: &str, prefix: u8) -> LocalAddr {
        LocalAddr {
            interface: name.into(),
            ip: ip.parse().expect("ip"),
            prefix,
        }
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|x| x.parse().expect("ip")).collect()
    }

    #[test]
    fn same_subnet_on_a_real_interface_wins() {
        let local = [
            l("eth0", "192.168.1.20", 24),
            l("docker0", "172.17.0.1", 16),
        ];
        let remote = ips(&[
            "172.17.0.1",
            "10.8.0.5",
            "fe80::1",
            "192.168.1.10",
            "2001:db8::5",
        ]);
        assert_eq!(
            order_addrs(&remote, &local),
            ips(&["192.168.1.10", "10.8.0.5", "2001:db8::5", "172.17.0.1"])
        );
    }

    #[test]
    fn virtual_and_link_local_come_last() {
        let local = [
            l("wlan0", "10.0.0.7", 24),
            l("vEthernet (WSL)", "172.20.48.1", 20),
        ];
        let remote = ips(&["169.254.3.3", "172.20.50.2", "172.17.0.2", "10.0.0.2"]);
        assert_eq!(
            order_addrs(&remote, &local),
            ips(&["10.0.0.2", "172.20.50.2", "172.17.0.2", "169.254.3.3"])
        );
    }

    #[test]
    fn nothing_else_still_yields_something() {
        assert_eq!(
            order_addrs(&ips(&["172.17.0.3"]), &[]),
            ips(&["172.17.0.3"])
        );
        assert!(order_addrs(&ips(&["fe80::1"]), &[]).is_empty());
        assert_eq!(
            order_addrs(&ips(&["127.0.0.1"]), &[l("lo", "127.0.0.1", 8)]),
            ips(&["127.0.0.1"])
        );
    }

    #[test]
    fn subnet_math() {
        let a: Ipv4Addr = "10.1.2.3".parse().expect("ip");
        assert!(same_subnet(a, "10.1.2.200".parse().expect("ip"), 24));
        assert!(!same_subnet(a, "10.1.3.1".parse().expect("ip"), 24));
        assert!(same_subnet(a, "11.0.0.0".parse().expect("ip"), 0));
        assert!(is_virtual_interface("docker0") && !is_virtual_interface("eth0"));
    }
}
