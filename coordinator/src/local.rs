//! A coordinator group inside one process, on loopback ports chosen by the OS: what
//! `idunno up` embeds and what the integration tests start. Nodes can be stopped and restarted
//! on the same port and data folder, like a process crash and restart.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::CoordinatorConfig;
use crate::{start, CoordinatorHandle, StartError};

/// `n` coordinators forming one Raft group.
pub struct LocalGroup {
    configs: Vec<CoordinatorConfig>,
    nodes: Vec<Option<CoordinatorHandle>>,
}

impl LocalGroup {
    /// Starts `n` coordinators with data folders `dir/c<id>`; `tweak` adjusts each config.
    pub async fn start(
        n: u64,
        dir: &Path,
        tweak: impl Fn(&mut CoordinatorConfig),
    ) -> Result<LocalGroup, StartError> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        Self::start_on(listeners, dir, tweak).await
    }

    /// Starts one coordinator per listener (node ids 1, 2, … in order).
    pub async fn start_on(
        listeners: Vec<TcpListener>,
        dir: &Path,
        tweak: impl Fn(&mut CoordinatorConfig),
    ) -> Result<LocalGroup, StartError> {
        let mut peers = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            peers.push((i as u64 + 1, l.local_addr()?.to_string()));
        }
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let mut config = CoordinatorConfig::new(id, dir.join(format!("c{id}")));
            config.listen = peers[i].1.clone();
            config.peers = peers.clone();
            tweak(&mut config);
            nodes.push(Some(start(config.clone(), listener).await?));
            configs.push(config);
        }
        Ok(LocalGroup { configs, nodes })
    }

    /// Every node's address, running or not.
    pub fn addrs(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.listen.clone()).collect()
    }

    /// The address of node `id`.
    pub fn addr(&self, id: u64) -> String {
        self.configs[(id - 1) as usize].listen.clone()
    }

    /// The running node `id`, if it runs.
    pub fn node(&self, id: u64) -> Option<&CoordinatorHandle> {
        self.nodes.get((id - 1) as usize)?.as_ref()
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.node(*id).is_some())
            .collect()
    }

    /// Waits until every running node agrees on one leader, and returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let started = Instant::now();
        loop {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.raft().metrics().borrow().current_leader)
                .collect();
            if let Some(Some(first)) = leaders.first() {
                let agreed = leaders.iter().all(|l| *l == Some(*first));
                let alive = self.node(*first).is_some_and(|n| n.coordinator.is_leader());
                if agreed && alive {
                    return Some(*first);
                }
            }
            if started.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id` (its data stays).
    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[(id - 1) as usize].take() {
            node.shutdown().await;
        }
    }

    /// Starts node `id` again on its address and data folder.
    pub async fn restart(&mut self, id: u64) -> Result<(), StartError> {
        self.stop(id).await;
        let config = self.configs[(id - 1) as usize].clone();
        // The previous instance's storage may take a moment to be released.
        let mut attempts = 0;
        let handle = loop {
            let listener = TcpListener::bind(&config.listen).await?;
            match start(config.clone(), listener).await {
                Ok(handle) => break handle,
                Err(StartError::Storage { .. }) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.nodes[(id - 1) as usize] = Some(handle);
        Ok(())
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }
}
