//! Address management of the default bridge: its subnet (172.17.0.0/16, or the first private
//! range no address of the host overlaps, as dockerd's default pools) and its containers'
//! addresses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 subnet, `A.B.C.D/N` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Pool {
    type Err = String;

    /// `A.B.C.D/N` with the host bits zero, as dockerd requires of `--subnet`.
    fn from_str(text: &str) -> Result<Pool, String> {
        let bad = || format!("invalid subnet {text}");
        let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 30).ok_or_else(bad)?;
        let network = Ipv4Addr::from(u32::from(ip) & mask(prefix));
        if network != ip {
            return Err(format!(
                "invalid subnet {text}: it should be {network}/{prefix}"
            ));
        }
        Ok(Pool { network, prefix })
    }
}

impl serde::Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pool, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Pool {
    /// The first address, the bridge's.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether two subnets overlap.
    pub fn overlaps(&self, other: &Pool) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.network) & m == u32::from(other.network) & m
    }

    /// The lowest free address after the gateway, below broadcast.
    pub fn allocate(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u64 << (32 - u32::from(self.prefix));
        (2..size.saturating_sub(1))
            .map(|n| Ipv4Addr::from(base + n as u32))
            .find(|ip| !used.contains(ip))
    }
}

/// dockerd's default local pools, in order: 172.17–31.0.0/16, then 192.168.0–240.0/20.
fn candidates() -> impl Iterator<Item = Pool> {
    (17..=31)
        .map(|b| Pool {
            network: Ipv4Addr::new(172, b, 0, 0),
            prefix: 16,
        })
        .chain((0..=240).step_by(16).map(|c| Pool {
            network: Ipv4Addr::new(192, 168, c, 0),
            prefix: 20,
        }))
}

/// The first default pool no network in `taken` (address, prefix) overlaps.
pub fn choose(taken: &[(Ipv4Addr, u8)]) -> Option<Pool> {
    let taken: Vec<Pool> = taken
        .iter()
        .filter(|(ip, _)| !ip.is_loopback())
        .map(|(ip, prefix)| Pool {
            network: Ipv4Addr::from(u32::from(*ip) & mask(*prefix)),
            prefix: *prefix,
        })
        .collect();
    candidates().find(|pool| !taken.iter().any(|t| t.overlaps(pool)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_is_172_17_unless_taken() {
        let pool = choose(&[(Ipv4Addr::new(10, 0, 2, 15), 24)]).unwrap();
        assert_eq!(pool.to_string(), "172.17.0.0/16");
        assert_eq!(pool.gateway(), Ipv4Addr::new(172, 17, 0, 1));
        let pool = choose(&[(Ipv4Addr::new(172, 17, 5, 1), 24)]).unwrap();
        assert_eq!(pool.to_string(), "172.18.0.0/16");
        // A host on 172.16.0.0/12 takes every 172 pool.
        let pool = choose(&[(Ipv4Addr::new(172, 20, 0, 9), 12)]).unwrap();
        assert_eq!(pool.to_string(), "192.168.0.0/20");
    }

    #[test]
    fn subnets_parse_with_zero_host_bits() {
        let pool: Pool = "10.5.0.0/16".parse().unwrap();
        assert_eq!(pool.to_string(), "10.5.0.0/16");
        assert!("10.5.0.1/16".parse::<Pool>().is_err());
        assert!("10.5.0.0".parse::<Pool>().is_err());
        let json = serde_json::to_string(&pool).unwrap();
        assert_eq!(json, "\"10.5.0.0/16\"");
        assert_eq!(serde_json::from_str::<Pool>(&json).unwrap(), pool);
    }

    #[test]
    fn addresses_start_after_the_gateway_and_skip_used_ones() {
        let pool = Pool {
            network: Ipv4Addr::new(172, 17, 0, 0),
            prefix: 16,
        };
        let mut used = BTreeSet::new();
        assert_eq!(pool.allocate(&used), Some(Ipv4Addr::new(172, 17, 0, 2)));
        used.insert(Ipv4Addr::new(172, 17, 0, 2));
        assert_eq!(pool.allocate(&used), Some(Ipv4Addr::new(172, 17, 0, 3)));
        assert!(pool.contains(Ipv4Addr::new(172, 17, 9, 9)));
        let tiny = Pool {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 30,
        };
        used.insert(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(tiny.allocate(&used), None);
    }
}
