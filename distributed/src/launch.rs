//! Rendezvous parameters read from the environment a launcher sets (torchrun or Slurm).

use std::fmt;

use crate::{Error, Result};

/// Which launcher set the variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchSource {
    /// torchrun (or any launcher that sets `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`).
    Torchrun,
    /// Slurm's `srun`: `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID`, with the job script
    /// exporting `MASTER_ADDR`/`MASTER_PORT`.
    Slurm,
}

/// How the Gloo backend picks the network device it binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlooDevice {
    /// `createDeviceForHostname`: bind to this address (the loopback address when the
    /// master is on this machine's loopback).
    Hostname(String),
    /// `createDeviceForInterface`: bind to this network interface (`GLOO_SOCKET_IFNAME`).
    Interface(String),
    /// `createDefaultDevice`: this machine's hostname, else loopback (c10d's default).
    Default,
}

/// Who serves the c10d TCPStore at `MASTER_ADDR:MASTER_PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreServer {
    /// Rank 0 serves it and the other ranks connect (Slurm, plain launch variables,
    /// torchrun with `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`).
    Rank0,
    /// torchrun's agent already serves it (`TORCHELASTIC_USE_AGENT_STORE=True`): every
    /// rank, rank 0 included, connects as a client and none binds a port.
    Agent,
}

/// One process's place in a distributed launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank on this node (`LOCAL_RANK`/`SLURM_LOCALID`), when the launcher says.
    pub local_rank: Option<usize>,
    /// Processes on this node (`LOCAL_WORLD_SIZE`/`SLURM_NTASKS_PER_NODE`), when known.
    pub local_world_size: Option<usize>,
    /// Address of the TCPStore (rank 0's or torchrun's agent's).
    pub master_addr: String,
    /// Port of the TCPStore.
    pub master_port: u16,
    /// Who serves the TCPStore.
    pub store_server: StoreServer,
    /// Which launcher set the variables.
    pub source: LaunchSource,
    /// The device Gloo binds to.
    pub gloo_device: GlooDevice,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} of {} ({:?}, store {}:{})",
            self.rank, self.world_size, self.source, self.master_addr, self.master_port
        )
    }
}

impl Launch {
    /// Reads the launch from the process environment; `Ok(None)` when the process was not
    /// started by a distributed launcher (a single process).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the launch through `lookup` (a variable's value, `None` when unset).
    ///
    /// - torchrun when `RANK` or `WORLD_SIZE` is set: `RANK`, `WORLD_SIZE`,
    ///   `MASTER_ADDR`, `MASTER_PORT` are required; `LOCAL_RANK`, `LOCAL_WORLD_SIZE`
    ///   optional.
    /// - otherwise Slurm when `SLURM_PROCID` is set and `SLURM_NTASKS` > 1:
    ///   `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `MASTER_ADDR`, `MASTER_PORT`
    ///   are required; a one-task Slurm job is a single process (`Ok(None)`).
    /// - otherwise `Ok(None)`.
    ///
    /// `TORCHELASTIC_USE_AGENT_STORE=True` (torchrun's agent serves the store; the exact
    /// spelling torch's `_torchelastic_use_agent_store` tests) makes every rank a client
    /// ([`StoreServer::Agent`]); otherwise rank 0 serves it.
    ///
    /// `GLOO_SOCKET_IFNAME` (its first name) picks Gloo's interface; without it Gloo binds
    /// to the loopback address when `MASTER_ADDR` is a loopback one, else to c10d's
    /// default device.
    pub fn from_lookup<F>(lookup: F) -> Result<Option<Launch>>
    where
        F: Fn(&str) -> Option<String>,
    {
        let (source, rank_var, world_var, local_var, local_world_var) =
            if lookup("RANK").is_some() || lookup("WORLD_SIZE").is_some() {
                (
                    LaunchSource::Torchrun,
                    "RANK",
                    "WORLD_SIZE",
                    "LOCAL_RANK",
                    "LOCAL_WORLD_SIZE",
                )
            } else if lookup("SLURM_PROCID").is_some() {
                let ntasks = required(&lookup, "SLURM_NTASKS")?;
                if parse_count(&ntasks, "SLURM_NTASKS")? == 1 {
                    return Ok(None);
                }
                (
                    LaunchSource::Slurm,
                    "SLURM_PROCID",
                    "SLURM_NTASKS",
                    "SLURM_LOCALID",
                    "SLURM_NTASKS_PER_NODE",
                )
            } else {
                return Ok(None);
            };

        let world_size = parse_count(&required(&lookup, world_var)?, world_var)?;
        if i32::try_from(world_size).is_err() {
            return Err(env_err(
                world_var,
                format!("{world_size} processes is more than c10d supports"),
            ));
        }
        let rank = parse_index(&required(&lookup, rank_var)?, rank_var)?;
        if rank >= world_size {
            return Err(env_err(
                rank_var,
                format!("rank {rank} is not below the world size {world_size} ({world_var})"),
            ));
        }

        let local_rank = match lookup(local_var) {
            Some(v) => Some(parse_index(&v, local_var)?),
            None if source == LaunchSource::Slurm => return Err(missing(local_var)),
            None => None,
        };
        let local_world_size = match lookup(local_world_var) {
            // Slurm writes e.g. `2(x3)` for heterogeneous layouts: only a plain count is used.
            Some(v) if source == LaunchSource::Slurm => {
                v.trim().parse::<usize>().ok().filter(|&n| n > 0)
            }
            Some(v) => Some(parse_count(&v, local_world_var)?),
            None => None,
        };
        if let (Some(lr), Some(lws)) = (local_rank, local_world_size) {
            if lr >= lws {
                return Err(env_err(
                    local_var,
                    format!("local rank {lr} is not below {local_world_var}={lws}"),
                ));
            }
        }

        let master_addr = required(&lookup, "MASTER_ADDR")?.trim().to_owned();
        if master_addr.is_empty() || master_addr.chars().any(char::is_whitespace) {
            return Err(env_err(
                "MASTER_ADDR",
                format!("{master_addr:?} is not a host name or address"),
            ));
        }
        let port_text = required(&lookup, "MASTER_PORT")?;
        let master_port = match port_text.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(env_err(
                    "MASTER_PORT",
                    format!("{port_text:?} is not a port number (1-65535)"),
                ))
            }
        };

        let gloo_device = match lookup("GLOO_SOCKET_IFNAME").as_deref().map(str::trim) {
            Some(names) if !names.is_empty() => {
                GlooDevice::Interface(names.split(',').next().unwrap_or(names).trim().to_owned())
            }
            _ => loopback_device(&master_addr),
        };

        // torch/distributed/rendezvous.py: `_torchelastic_use_agent_store()` is
        // `os.environ.get("TORCHELASTIC_USE_AGENT_STORE", None) == str(True)`.
        let store_server = if lookup("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
            StoreServer::Agent
        } else {
            StoreServer::Rank0
        };

        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
            store_server,
            source,
            gloo_device,
        }))
    }

    /// Whether this process is rank 0.
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }

    /// Whether this process serves the TCPStore: rank 0, unless torchrun's agent serves it.
    pub fn serves_store(&self) -> bool {
        self.is_master() && self.store_server == StoreServer::Rank0
    }

    /// The one address the store's server binds, when narrower than every interface:
    /// the loopback address `MASTER_ADDR` names (`127.x.y.z`, `::1`, or `localhost` as
    /// `127.0.0.1`, the address Gloo binds too), since every rank is then on this host.
    /// `None` for any other `MASTER_ADDR`, whose server binds every interface (c10d's
    /// default): a host name may resolve to another address on rank 0's node than on the
    /// others (Debian maps a host's own name to 127.0.1.1), and an address seen by the
    /// other nodes may not be one rank 0 can bind (NAT, containers). `None` also when
    /// this process serves no store.
    pub fn store_bind_address(&self) -> Option<std::net::IpAddr> {
        if !self.serves_store() {
            return None;
        }
        match loopback_device(&self.master_addr) {
            GlooDevice::Hostname(h) => h.parse().ok(),
            _ => None,
        }
    }
}

fn loopback_device(master_addr: &str) -> GlooDevice {
    if master_addr.eq_ignore_ascii_case("localhost") {
        return GlooDevice::Hostname("127.0.0.1".to_owned());
    }
    let bare = master_addr.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => GlooDevice::Hostname(bare.to_owned()),
        _ => GlooDevice::Default,
    }
}

fn env_err(var: &'static str, reason: String) -> Error {
    Error::Env { var, reason }
}

fn missing(var: &'static str) -> Error {
    env_err(var, "not set, but the launch needs it".to_owned())
}

fn required<F: Fn(&str) -> Option<String>>(lookup: &F, var: &'static str) -> Result<String> {
    lookup(var).ok_or_else(|| missing(var))
}

fn parse_index(text: &str, var: &'static str) -> Result<usize> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| env_err(var, format!("{text:?} is not a non-negative integer")))
}

fn parse_count(text: &str, var: &'static str) -> Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(env_err(var, format!("{text:?} is not a positive integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_lookup(|k| map.get(k).cloned())
    }

    fn env_var_of(r: Result<Option<Launch>>) -> (&'static str, String) {
        match r {
            Err(e @ Error::Env { var, .. }) => (var, e.to_string()),
            other => panic!("expected an Env error, got {other:?}"),
        }
    }

    const TORCHRUN: &[(&str, &str)] = &[
        ("RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "1"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    fn without(
        vars: &[(&'static str, &'static str)],
        name: &str,
    ) -> Vec<(&'static str, &'static str)> {
        vars.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    fn with(
        vars: &[(&'static str, &'static str)],
        name: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v = without(vars, name);
        v.push((name, value));
        v
    }

    #[test]
    fn no_launcher_is_single_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(
            launch(&[("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1")]).unwrap(),
            None
        );
    }

    #[test]
    fn torchrun_is_parsed() {
        let l = launch(TORCHRUN).unwrap().unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 1,
                world_size: 4,
                local_rank: Some(1),
                local_world_size: Some(2),
                master_addr: "127.0.0.1".into(),
                master_port: 29500,
                store_server: StoreServer::Rank0,
                source: LaunchSource::Torchrun,
                gloo_device: GlooDevice::Hostname("127.0.0.1".into()),
            }
        );
        assert!(!l.is_master());
    }

    #[test]
    fn torchrun_local_variables_are_optional() {
        let vars = without(&without(TORCHRUN, "LOCAL_RANK"), "LOCAL_WORLD_SIZE");
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!((l.local_rank, l.local_world_size), (None, None));
    }

    #[test]
    fn missing_variables_are_named() {
        for name in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
            let (var, msg) = env_var_of(launch(&without(TORCHRUN, name)));
            assert_eq!(var, name);
            assert!(msg.contains(name) && msg.contains("not set"), "{msg}");
        }
    }

    #[test]
    fn malformed_variables_are_named() {
        let cases: &[(&str, &str)] = &[
            ("RANK", "one"),
            ("RANK", "-1"),
            ("WORLD_SIZE", "0"),
            ("WORLD_SIZE", "x"),
            ("LOCAL_RANK", "?"),
            ("LOCAL_WORLD_SIZE", "0"),
            ("MASTER_PORT", "0"),
            ("MASTER_PORT", "70000"),
            ("MASTER_PORT", "http"),
            ("MASTER_ADDR", ""),
            ("MASTER_ADDR", "a b"),
        ];
        for &(name, value) in cases {
            let (var, msg) = env_var_of(launch(&with(TORCHRUN, name, value)));
            assert_eq!(var, name, "{name}={value}: {msg}");
        }
    }

    #[test]
    fn rank_must_be_below_world_size() {
        let (var, msg) = env_var_of(launch(&with(TORCHRUN, "RANK", "4")));
        assert_eq!(var, "RANK");
        assert!(msg.contains("world size 4"), "{msg}");
        let (var, _) = env_var_of(launch(&with(TORCHRUN, "LOCAL_RANK", "2")));
        assert_eq!(var, "LOCAL_RANK");
    }

    #[test]
    fn rank_without_master_port_is_an_error() {
        let (var, _) = env_var_of(launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
        ]));
        assert_eq!(var, "MASTER_PORT");
    }

    #[test]
    fn slurm_is_parsed() {
        let l = launch(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "2"),
            ("MASTER_ADDR", "node001"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.world_size, l.local_rank, l.local_world_size),
            (3, 4, Some(1), Some(2))
        );
        assert_eq!(l.source, LaunchSource::Slurm);
        assert_eq!(l.gloo_device, GlooDevice::Default);
    }

    #[test]
    fn slurm_heterogeneous_tasks_per_node_is_unknown() {
        let l = launch(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "5"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NTASKS_PER_NODE", "2(x2),1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.local_world_size, None);
    }

    #[test]
    fn slurm_single_task_is_single_process() {
        assert_eq!(
            launch(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_LOCALID", "0")
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn slurm_needs_master_and_local_id() {
        let base = [
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_PORT", "29400"),
        ];
        assert_eq!(env_var_of(launch(&base)).0, "MASTER_ADDR");
        let base = [
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29400"),
        ];
        assert_eq!(env_var_of(launch(&base)).0, "SLURM_LOCALID");
        let base = [
            ("SLURM_PROCID", "2"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ];
        assert_eq!(env_var_of(launch(&base)).0, "SLURM_PROCID");
        assert_eq!(
            env_var_of(launch(&[("SLURM_PROCID", "0")])).0,
            "SLURM_NTASKS"
        );
    }

    #[test]
    fn torchrun_takes_precedence_over_slurm() {
        let mut vars = TORCHRUN.to_vec();
        vars.extend([
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "0"),
        ]);
        let l = launch(&vars).unwrap().unwrap();
        assert_eq!(
            (l.source, l.rank, l.world_size),
            (LaunchSource::Torchrun, 1, 4)
        );
    }

    #[test]
    fn gloo_device_follows_master_and_ifname() {
        let dev = |addr: &'static str| {
            launch(&with(TORCHRUN, "MASTER_ADDR", addr))
                .unwrap()
                .unwrap()
                .gloo_device
        };
        assert_eq!(dev("localhost"), GlooDevice::Hostname("127.0.0.1".into()));
        assert_eq!(dev("127.0.0.2"), GlooDevice::Hostname("127.0.0.2".into()));
        assert_eq!(dev("::1"), GlooDevice::Hostname("::1".into()));
        assert_eq!(dev("10.1.2.3"), GlooDevice::Default);
        let l = launch(&with(TORCHRUN, "GLOO_SOCKET_IFNAME", "eth0,eth1"))
            .unwrap()
            .unwrap();
        assert_eq!(l.gloo_device, GlooDevice::Interface("eth0".into()));
    }

    #[test]
    fn torchruns_agent_store_makes_every_rank_a_client() {
        for rank in ["0", "1"] {
            let vars = with(
                &with(TORCHRUN, "RANK", rank),
                "TORCHELASTIC_USE_AGENT_STORE",
                "True",
            );
            let l = launch(&vars).unwrap().unwrap();
            assert_eq!(l.store_server, StoreServer::Agent);
            assert!(!l.serves_store(), "rank {rank}");
            assert_eq!(l.store_bind_address(), None);
        }
        // torch tests `== str(True)`: any other value (torchrun writes `False` when the
        // agent shares no store) leaves the store to rank 0.
        for value in ["False", "true", "1", ""] {
            let vars = with(
                &with(TORCHRUN, "RANK", "0"),
                "TORCHELASTIC_USE_AGENT_STORE",
                value,
            );
            let l = launch(&vars).unwrap().unwrap();
            assert_eq!(l.store_server, StoreServer::Rank0, "{value:?}");
            assert!(l.serves_store());
        }
        let l = launch(&with(TORCHRUN, "RANK", "0")).unwrap().unwrap();
        assert_eq!(l.store_server, StoreServer::Rank0);
        assert!(l.serves_store());
    }

    #[test]
    fn the_store_binds_the_loopback_only_when_master_addr_is_one() {
        let bind = |addr: &'static str| {
            launch(&with(&with(TORCHRUN, "RANK", "0"), "MASTER_ADDR", addr))
                .unwrap()
                .unwrap()
                .store_bind_address()
                .map(|ip| ip.to_string())
        };
        assert_eq!(bind("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(bind("127.0.0.2").as_deref(), Some("127.0.0.2"));
        assert_eq!(bind("localhost").as_deref(), Some("127.0.0.1"));
        assert_eq!(bind("::1").as_deref(), Some("::1"));
        assert_eq!(bind("[::1]").as_deref(), Some("::1"));
        assert_eq!(bind("10.1.2.3"), None);
        assert_eq!(bind("node001"), None);
        // Rank 1 serves nothing, so it binds nothing.
        let l = launch(TORCHRUN).unwrap().unwrap();
        assert_eq!(l.store_bind_address(), None);
    }
}
