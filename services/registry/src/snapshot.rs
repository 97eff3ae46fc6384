//! Every replica's in-memory view of the registry: services, their instances and traffic
//! policies, read without locks (`ArcSwap`) by discovery and, later, by the gateway's
//! routing. It is refreshed per service when the store reports a change (a `NOTIFY` from
//! any replica, or this replica's own write), fully on start, after a lost notification
//! connection, and periodically as a safety net.
//!
//! The snapshot never decides expiry on its own schedule: readers compare each instance's
//! `expires_at` with the clock, so a lapsed TTL takes effect at once.

use crate::model::ServiceData;
use crate::store::{Store, StoreError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The highest registry index this snapshot reflects.
    pub index: i64,
    // Looked up on every proxied request: a fast hasher (service names are registered
    // by authenticated operators, not chosen by the requests that look them up).
    by_id: HashMap<Uuid, Arc<ServiceData>, foldhash::fast::RandomState>,
    by_name: HashMap<String, Uuid, foldhash::fast::RandomState>,
}

impl Snapshot {
    pub fn service(&self, id: Uuid) -> Option<&Arc<ServiceData>> {
        self.by_id.get(&id)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Arc<ServiceData>> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }

    /// Services sorted by name.
    pub fn services(&self) -> Vec<&Arc<ServiceData>> {
        let mut all: Vec<&Arc<ServiceData>> = self.by_id.values().collect();
        all.sort_by(|a, b| a.service.name.as_str().cmp(b.service.name.as_str()));
        all
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn insert(&mut self, data: ServiceData) {
        let id = data.service.id;
        if let Some(previous) = self.by_id.get(&id)
            && previous.service.name != data.service.name
        {
            self.by_name.remove(previous.service.name.as_str());
        }
        self.index = self.index.max(data.change_index);
        self.by_name.insert(data.service.name.to_string(), id);
        self.by_id.insert(id, Arc::new(data));
    }

    fn remove(&mut self, id: Uuid) {
        if let Some(previous) = self.by_id.remove(&id) {
            self.by_name.remove(previous.service.name.as_str());
        }
    }
}

/// The shared, swappable snapshot and the index watchers wait on.
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    index: watch::Sender<i64>,
    /// Refreshes load from the store and apply under this lock, so a slower, older read
    /// can never overwrite a newer one.
    refresh: Mutex<()>,
}

impl SnapshotCell {
    pub fn new() -> SnapshotCell {
        SnapshotCell {
            current: ArcSwap::from_pointee(Snapshot::default()),
            index: watch::channel(0).0,
            refresh: Mutex::new(()),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver that sees every index this snapshot moves to.
    pub fn watch_index(&self) -> watch::Receiver<i64> {
        self.index.subscribe()
    }

    fn publish(&self, next: Snapshot) {
        let index = next.index;
        self.current.store(Arc::new(next));
        self.index.send_if_modified(|current| {
            let moved = *current != index;
            *current = index;
            moved
        });
    }

    /// Replaces everything with the store's current state.
    pub async fn reload_all(&self, store: &Store) -> Result<(), StoreError> {
        let _guard = self.refresh.lock().await;
        let (index, services) = store.load_all().await?;
        let mut next = Snapshot { index, ..Snapshot::default() };
        for data in services {
            next.insert(data);
        }
        next.index = next.index.max(index);
        self.publish(next);
        Ok(())
    }

    /// Reloads one service (removing it when it is gone).
    pub async fn refresh_service(&self, store: &Store, id: Uuid) -> Result<(), StoreError> {
        let _guard = self.refresh.lock().await;
        let loaded = store.load_service(id).await?;
        let mut next = (*self.load()).clone();
        match loaded {
            Some(data) => next.insert(data),
            None => {
                next.remove(id);
                // A deregistration moved the index even though no service carries it now.
                next.index = next.index.max(store.index().await?);
            }
        }
        self.publish(next);
        Ok(())
    }
}

impl Default for SnapshotCell {
    fn default() -> Self {
        SnapshotCell::new()
    }
}
