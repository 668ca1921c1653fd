//! The launch contract, torchrun's: `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`; `TORCHELASTIC_USE_AGENT_STORE=True` when torchrun's agent hosts the store (then no rank does), and
//! `TORCHELASTIC_RESTART_COUNT`, which gives each restart a fresh store prefix. Any launcher that sets these (torchrun,
//! Slurm's `srun` with a small wrapper, `kiln train --nproc`) starts kiln's workers.

use std::time::Duration;

use crate::{Error, Result};

/// How long a rank waits for the others (store, collectives) before it fails, naming what it waited for.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where this process stands in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`); otherwise rank 0 does.
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: 0 for the first launch.
    pub restart_count: u32,
}

impl DistEnv {
    /// Reads the contract from the environment: `None` when `WORLD_SIZE` is unset (one process, no group); an
    /// error naming the variable when one is missing or unreadable.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let bad = |key: &str, reason: String| Error::InvalidSetting { key: key.into(), reason };
        let number = |key: &str, text: Option<String>| -> Result<usize> {
            let text =
                text.ok_or_else(|| bad(key, "not set (WORLD_SIZE is, so every launch variable must be)".into()))?;
            text.trim().parse().map_err(|_| bad(key, format!("'{text}' is not a whole number")))
        };
        let world_size = number("WORLD_SIZE", Some(world))?;
        if world_size == 0 {
            return Err(bad("WORLD_SIZE", "0 ranks".into()));
        }
        let rank = number("RANK", get("RANK"))?;
        if rank >= world_size {
            return Err(bad("RANK", format!("{rank} is not below WORLD_SIZE {world_size}")));
        }
        let local_rank = get("LOCAL_RANK").map_or(Ok(rank), |v| number("LOCAL_RANK", Some(v)))?;
        let local_world_size =
            get("LOCAL_WORLD_SIZE").map_or(Ok(world_size), |v| number("LOCAL_WORLD_SIZE", Some(v)))?;
        if local_rank >= local_world_size {
            return Err(bad("LOCAL_RANK", format!("{local_rank} is not below LOCAL_WORLD_SIZE {local_world_size}")));
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = get("MASTER_PORT").ok_or_else(|| bad("MASTER_PORT", "not set".into()))?;
        let master_port = port.trim().parse().map_err(|_| bad("MASTER_PORT", format!("'{port}' is not a port")))?;
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let restart_count =
            get("TORCHELASTIC_RESTART_COUNT").map_or(Ok(0), |v| number("TORCHELASTIC_RESTART_COUNT", Some(v)))? as u32;
        Ok(Some(Self {
            rank,
            local_rank,
            world_size,
            local_world_size,
            master_addr,
            master_port,
            agent_store,
            restart_count,
        }))
    }

    /// Whether this rank hosts the store: rank 0, unless torchrun's agent does.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }

    /// The store's key prefix: one per torchrun restart, so that a restarted job never reads the last one's keys.
    pub fn store_prefix(&self) -> String {
        format!("kiln/{}/", self.restart_count)
    }

    /// Rank 0 writes (checkpoints, results, the progress bar); the others compute.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|key| map.get(key).cloned())
    }

    #[test]
    fn torchruns_variables_are_read_and_checked_naming_the_variable() {
        assert_eq!(env(&[]).unwrap(), None, "one process without WORLD_SIZE");
        let torchrun = [
            ("RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.5"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ];
        let e = env(&torchrun).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.master_addr.as_str(), e.master_port), (1, 2, "10.0.0.5", 29500));
        assert!(e.agent_store && !e.hosts_store() && !e.is_main());
        assert_eq!(e.store_prefix(), "kiln/2/");
        let own = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "29500")]).unwrap().unwrap();
        assert!(own.hosts_store() && own.is_main() && own.local_rank == 0 && own.local_world_size == 2);
        for (pairs, key) in [
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK"),
            (vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "two"), ("MASTER_PORT", "1")], "WORLD_SIZE"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "2")], "MASTER_PORT"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")], "MASTER_PORT"),
        ] {
            let err = env(&pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        }
    }
}
