//! The registry's application layer: the rules of registration, heartbeats, discovery,
//! dependencies, traffic policies and configuration, over the [`Store`] (for writes and
//! configuration) and the [`SnapshotCell`] (for everything discovery and listing read).
//!
//! Every write refreshes this replica's snapshot before it returns, so a client reads its
//! own writes from any operation; other replicas catch up through change notifications.

use crate::breaker::{StoreBreaker, probe_loop};
use crate::cursor;
use crate::graph;
use crate::model::{self, ConfigKey, InstanceRecord, ServiceData, millis_to_time, positive};
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::store::{IDEMPOTENCY_KEY_CONSTRAINT, IdempotencyRecord, IdempotentAnswer, Store, StoreError};
use pake_mesh_server::types;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    /// The request is well-formed but breaks a rule the schema cannot express.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    BadCursor(String),
    /// Two preconditions of one request (a body's `expected_version` and its `If-Match`)
    /// that cannot both hold.
    #[error("{0}")]
    ConflictingPreconditions(String),
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    /// The store went away while the write was committing.
    #[error("the outcome of the write is unknown")]
    OutcomeUnknown(#[source] StoreError),
    /// An idempotency key reused for a different request.
    #[error("{0}")]
    KeyReused(String),
    #[error("registry failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Down => RegistryError::Unavailable(error),
            StoreError::OutcomeUnknown(_) => RegistryError::OutcomeUnknown(error),
            StoreError::NotFound => RegistryError::NotFound("not found".into()),
            other => RegistryError::Internal(Box::new(other)),
        }
    }
}

impl From<serde_json::Error> for RegistryError {
    fn from(error: serde_json::Error) -> Self {
        RegistryError::Internal(Box::new(error))
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// How often expired instances are marked critical and overdue ones removed. Discovery
/// does not wait for it (it compares expiry with the clock); blocking queries do.
const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the whole snapshot is reloaded regardless of notifications (and expired
/// idempotency keys forgotten).
const FULL_RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const REGISTER_SERVICE: &str = "registerService";

/// A write's `Idempotency-Key` and whose it is.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub owner: &'a str,
    pub key: &'a str,
}

pub struct Registry {
    store: Store,
    snapshot: Arc<SnapshotCell>,
    breaker: Arc<StoreBreaker>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One page of a sorted list and the cursor of the next.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: types::NextCursor,
}

fn page<T, K: AsRef<str>>(mut items: Vec<T>, limit: u64, key: impl Fn(&T) -> K) -> Result<Page<T>> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| cursor::encode(key(last).as_ref()).parse()).transpose().map_err(internal)?
    } else {
        None
    };
    Ok(Page { items, next_cursor: types::NextCursor(next_cursor) })
}

/// A value the contract's types refuse although the registry made it: a bug, answered 500.
fn internal(error: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
    RegistryError::Internal(Box::new(error))
}

/// The revision after `revision`.
fn next_revision(revision: NonZeroU64) -> NonZeroU64 {
    revision.saturating_add(1)
}

impl Registry {
    /// Loads the snapshot and starts the background work: expiry, reaping, change
    /// notifications (PostgreSQL) and periodic reloads. Dropping the registry stops them.
    pub async fn start(store: Store) -> Result<Registry> {
        let snapshot = Arc::new(SnapshotCell::new());
        snapshot.reload_all(&store).await?;
        let breaker = Arc::new(StoreBreaker::new());
        let mut tasks = vec![
            tokio::spawn(reap_loop(store.clone(), snapshot.clone(), breaker.clone())),
            tokio::spawn(reload_loop(store.clone(), snapshot.clone(), breaker.clone())),
            tokio::spawn(probe_loop(breaker.clone(), store.clone(), snapshot.clone())),
        ];
        if store.postgres_pool().is_some() {
            tasks.push(tokio::spawn(listen_loop(store.clone(), snapshot.clone())));
        }
        Ok(Registry { store, snapshot, breaker, tasks })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The breaker in front of the store: open while the store is known to be unreachable.
    pub fn breaker(&self) -> &StoreBreaker {
        &self.breaker
    }

    /// A store call on a request's path: refused at once while the breaker is open, and
    /// opening it when the store turns out to be unreachable.
    async fn guard<T>(
        &self,
        call: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        self.breaker.guard(call).await
    }

    /// After a committed write, refreshes this replica's view of the service and returns
    /// it. The write stands whatever happens here, so a failure is logged and `None`
    /// returned, and the write answers its success from what it wrote; the snapshot
    /// catches up when the store answers again (the breaker's probe reloads it) or at the
    /// next periodic reload.
    async fn refresh_after_commit(&self, id: Uuid) -> Option<Arc<ServiceData>> {
        match self.guard(self.snapshot.refresh_service(&self.store, id)).await {
            Ok(()) => self.snapshot().service(id).cloned(),
            Err(error) => {
                tracing::warn!(%error, service = %id, "a committed write could not refresh the snapshot");
                None
            }
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load()
    }

    pub fn snapshot_cell(&self) -> &Arc<SnapshotCell> {
        &self.snapshot
    }

    fn service_data(&self, id: Uuid) -> Result<Arc<ServiceData>> {
        self.snapshot().service(id).cloned().ok_or_else(|| not_found_service(id))
    }

    /// Registers a service. With an idempotency key, a retry of the same request within
    /// [`IDEMPOTENCY_KEY_LIFETIME`] answers what the first answered, and a different
    /// request under the key is refused.
    pub async fn register_service(
        &self,
        registration: types::ServiceRegistration,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<types::Service> {
        let now = chrono::Utc::now();
        let request = canonical_json(&serde_json::to_value(&registration)?);
        let expired_before_ms = idempotency_horizon_ms(now.timestamp_millis());
        let earlier = |answer: Option<IdempotentAnswer>| -> Result<types::Service> {
            match answer {
                Some(answer) if answer.request == request => Ok(serde_json::from_value(answer.response)?),
                Some(_) => Err(RegistryError::KeyReused(
                    "this Idempotency-Key was used for a different registration; use a new key for a new request"
                        .into(),
                )),
                None => Err(RegistryError::Conflict(
                    "a request with this Idempotency-Key was being processed; retry it".into(),
                )),
            }
        };
        if let Some(Idempotency { owner, key }) = idempotency
            && let Some(answer) =
                self.guard(self.store.idempotent_answer(owner, REGISTER_SERVICE, key, expired_before_ms)).await?
        {
            return earlier(Some(answer));
        }
        let types::ServiceRegistration { name, version, description, tags, metadata, owner, protocol, health_check } =
            registration;
        let service = types::Service {
            id: Uuid::new_v4(),
            name,
            version,
            description,
            tags: tags.unwrap_or_else(|| types::Tags(Vec::new())),
            metadata: metadata.unwrap_or_else(|| types::Metadata(Default::default())),
            owner,
            protocol: protocol.unwrap_or(types::ServiceProtocol::Http),
            health_check: health_check.unwrap_or_else(model::default_health_check),
            created_at: now,
            updated_at: now,
            revision: const { positive(1) },
        };
        let policy = model::traffic_policy(model::default_policy_spec(), &service, now, const { positive(1) });
        let record = match idempotency {
            Some(Idempotency { owner, key }) => Some(IdempotencyRecord {
                owner: owner.to_string(),
                operation: REGISTER_SERVICE,
                key: key.to_string(),
                request: request.clone(),
                response: serde_json::to_value(&service)?,
                expired_before_ms,
            }),
            None => None,
        };
        match self.guard(self.store.register_service(&service, &policy, record.as_ref())).await {
            Err(StoreError::Conflict(IDEMPOTENCY_KEY_CONSTRAINT)) => {
                // Another request under the key committed first: answer as it did.
                let Some(Idempotency { owner, key }) = idempotency else { unreachable!("no key, no key conflict") };
                let answer =
                    self.guard(self.store.idempotent_answer(owner, REGISTER_SERVICE, key, expired_before_ms)).await?;
                return earlier(answer);
            }
            Err(StoreError::Conflict(_)) => {
                return Err(RegistryError::Conflict(format!(
                    "a service named {} is already registered",
                    *service.name
                )));
            }
            other => other?,
        };
        Ok(self.refresh_after_commit(service.id).await.map_or(service, |data| data.service.clone()))
    }

    pub fn list_services(
        &self,
        name_prefix: Option<&str>,
        tag: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page<types::Service>> {
        let after = after.map(cursor::decode).transpose()?;
        let snapshot = self.snapshot();
        let items: Vec<types::Service> = snapshot
            .services()
            .into_iter()
            .map(|data| &data.service)
            .filter(|s| name_prefix.is_none_or(|p| s.name.starts_with(p)))
            .filter(|s| tag.is_none_or(|t| s.tags.iter().any(|x| x.as_str() == t)))
            .filter(|s| after.as_deref().is_none_or(|a| s.name.as_str() > a))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        page(items, limit, |s| s.name.to_string())
    }

    pub fn get_service(&self, id: Uuid) -> Result<types::Service> {
        Ok(self.service_data(id)?.service.clone())
    }

    pub async fn update_service(
        &self,
        id: Uuid,
        update: types::ServiceUpdate,
        if_match: Option<i64>,
    ) -> Result<types::Service> {
        // Read the current document from the store, not the snapshot, so the revision
        // check is against what is committed.
        let current = self.guard(self.store.load_service(id)).await?.ok_or_else(|| not_found_service(id))?;
        let revision = current.service.revision.get() as i64;
        if let Some(expected) = if_match
            && expected != revision
        {
            return Err(RegistryError::PreconditionFailed(format!(
                "if-match revision {expected} but the current revision is {revision}"
            )));
        }
        // Every field of the update is named, so that a field added to the contract does
        // not compile until it is applied here.
        let types::ServiceUpdate { version, description, tags, metadata, owner, protocol, health_check } = update;
        let mut service = current.service;
        if let Some(version) = version {
            service.version = version;
        }
        // An empty description or owner clears it.
        if let Some(description) = description {
            service.description = Some(description).filter(|d| !d.is_empty());
        }
        if let Some(owner) = owner {
            service.owner = match owner.as_str() {
                "" => None,
                // The update's owner differs from the service's only in admitting "".
                text => Some(text.parse().map_err(internal)?),
            };
        }
        if let Some(tags) = tags {
            service.tags = tags;
        }
        if let Some(metadata) = metadata {
            service.metadata = metadata;
        }
        if let Some(protocol) = protocol {
            service.protocol = protocol;
        }
        if let Some(health_check) = health_check {
            service.health_check = health_check;
        }
        service.updated_at = chrono::Utc::now();
        service.revision = next_revision(service.revision);
        match self.guard(self.store.update_service(&service, revision)).await {
            Err(StoreError::Stale { expected, actual }) => {
                return Err(RegistryError::PreconditionFailed(format!(
                    "the service changed concurrently (revision {expected} is now {actual}); read it again"
                )));
            }
            other => other?,
        }
        Ok(self.refresh_after_commit(id).await.map_or(service, |data| data.service.clone()))
    }

    pub async fn deregister_service(&self, id: Uuid) -> Result<()> {
        match self.guard(self.store.deregister_service(id)).await {
            Err(StoreError::NotFound) => return Err(not_found_service(id)),
            other => other?,
        }
        self.refresh_after_commit(id).await;
        Ok(())
    }

    pub async fn register_instance(
        &self,
        service_id: Uuid,
        registration: types::InstanceRegistration,
    ) -> Result<types::Instance> {
        let data = self.service_data(service_id)?;
        let now = now_ms();
        let types::InstanceRegistration {
            address,
            port,
            scheme,
            tags,
            weight,
            zone,
            metadata,
            ttl_seconds,
            health_url,
            deregister_critical_after_seconds,
        } = registration;
        let expires_at_ms = now + ttl_seconds.get() as i64 * 1000;
        let instance = types::Instance {
            id: Uuid::new_v4(),
            service_id,
            service_name: data.service.name.clone(),
            address,
            port,
            scheme: scheme.unwrap_or(types::InstanceScheme::Http),
            tags: tags.unwrap_or_else(|| types::Tags(Vec::new())),
            weight,
            zone,
            metadata: metadata.unwrap_or_else(|| types::Metadata(Default::default())),
            status: types::InstanceStatus::Passing,
            status_output: None,
            ttl_seconds,
            health_url,
            last_heartbeat_at: None,
            expires_at: millis_to_time(expires_at_ms),
            registered_at: chrono::Utc::now(),
            deregister_critical_after_seconds,
        };
        let record = InstanceRecord::new(instance, None, expires_at_ms);
        match self.guard(self.store.register_instance(&record)).await {
            Err(StoreError::Conflict(_)) => {
                return Err(RegistryError::Conflict(format!(
                    "an instance at {}:{} is already registered for {}",
                    *record.instance.address, record.instance.port, *data.service.name
                )));
            }
            Err(StoreError::NotFound) => return Err(not_found_service(service_id)),
            other => other?,
        };
        self.refresh_after_commit(service_id).await;
        Ok(record.effective(now_ms()))
    }

    pub fn list_instances(
        &self,
        service_id: Uuid,
        status: Option<types::InstanceStatus>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page<types::Instance>> {
        let after = after.map(cursor::decode).transpose()?;
        let data = self.service_data(service_id)?;
        let now = now_ms();
        let mut items: Vec<types::Instance> = data
            .instances
            .iter()
            .map(|record| record.effective(now))
            .filter(|instance| status.is_none_or(|s| instance.status == s))
            .collect();
        items.sort_by_key(|instance| instance.id);
        items.retain(|instance| after.as_deref().is_none_or(|a| instance.id.to_string().as_str() > a));
        items.truncate(limit as usize + 1);
        page(items, limit, |instance| instance.id.to_string())
    }

    pub fn get_instance(&self, service_id: Uuid, instance_id: Uuid) -> Result<types::Instance> {
        let data = self.service_data(service_id)?;
        data.instances
            .iter()
            .find(|record| record.instance.id == instance_id)
            .map(|record| record.effective(now_ms()))
            .ok_or_else(|| not_found_instance(instance_id))
    }

    pub async fn deregister_instance(&self, service_id: Uuid, instance_id: Uuid) -> Result<()> {
        match self.guard(self.store.deregister_instance(service_id, instance_id)).await {
            Err(StoreError::NotFound) => return Err(not_found_instance(instance_id)),
            other => other?,
        }
        self.refresh_after_commit(service_id).await;
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        service_id: Uuid,
        instance_id: Uuid,
        heartbeat: types::HeartbeatRequest,
    ) -> Result<types::Instance> {
        let data = self.service_data(service_id)?;
        let ttl_ms = data
            .instances
            .iter()
            .find(|record| record.instance.id == instance_id)
            .map(|record| record.instance.ttl_seconds.get() as i64 * 1000)
            .ok_or_else(|| not_found_instance(instance_id))?;
        let types::HeartbeatRequest { status, output } = heartbeat;
        let status = status.to_string();
        let output = output.as_ref().map(|o| o.as_str());
        let record = match self.guard(self.store.heartbeat(service_id, instance_id, &status, output, ttl_ms)).await {
            Err(StoreError::NotFound) => return Err(not_found_instance(instance_id)),
            other => other?,
        };
        self.refresh_after_commit(service_id).await;
        Ok(record.effective(now_ms()))
    }

    /// Healthy instances of a service. With `index`, waits up to `wait` for the service's
    /// change index to pass it (a blocking query) before answering.
    pub async fn discover(
        &self,
        name: &str,
        index: Option<u64>,
        wait: Duration,
        tag: Option<&str>,
        zone: Option<&str>,
        passing_only: bool,
    ) -> Result<types::Discovery> {
        if let Some(index) = index {
            let deadline = tokio::time::Instant::now() + wait;
            let mut changes = self.snapshot.watch_index();
            loop {
                let current = self.snapshot().service_by_name(name).map(|d| d.change_index);
                match current {
                    None => return Err(not_found_name(name)),
                    Some(current) if current as u64 > index => break,
                    Some(_) => {}
                }
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => continue,
                    // Timed out (or the registry is shutting down): answer what there is.
                    _ => break,
                }
            }
        }
        let snapshot = self.snapshot();
        let data = snapshot.service_by_name(name).ok_or_else(|| not_found_name(name))?;
        let now = now_ms();
        let instances: Vec<types::Instance> = data
            .instances
            .iter()
            .filter(|record| !record.is_expired(now))
            .map(|record| record.effective(now))
            .filter(|instance| match instance.status {
                types::InstanceStatus::Passing => true,
                types::InstanceStatus::Warning => !passing_only,
                types::InstanceStatus::Critical => false,
            })
            .filter(|instance| tag.is_none_or(|t| instance.tags.iter().any(|x| x.as_str() == t)))
            .filter(|instance| zone.is_none_or(|z| instance.zone.as_ref().is_some_and(|x| x.as_str() == z)))
            .collect();
        Ok(types::Discovery {
            service: data.service.name.clone(),
            index: data.change_index,
            instances,
            traffic_policy: data.policy.clone(),
        })
    }

    pub fn list_dependencies(
        &self,
        service_id: Uuid,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page<types::Dependency>> {
        let after = after.map(cursor::decode).transpose()?;
        let data = self.service_data(service_id)?;
        let items: Vec<types::Dependency> = data
            .dependencies
            .iter()
            .filter(|d| after.as_deref().is_none_or(|a| d.depends_on.as_str() > a))
            .take(limit as usize + 1)
            .cloned()
            .collect();
        page(items, limit, |d| d.depends_on.to_string())
    }

    pub async fn create_dependency(
        &self,
        service_id: Uuid,
        create: types::DependencyCreate,
    ) -> Result<types::Dependency> {
        let data = self.service_data(service_id)?;
        if create.depends_on == data.service.name {
            return Err(RegistryError::Invalid(format!("{} cannot depend on itself", *data.service.name)));
        }
        let types::DependencyCreate { depends_on, kind, description } = create;
        let dependency = types::Dependency {
            id: Uuid::new_v4(),
            service_id,
            service_name: data.service.name.clone(),
            depends_on,
            kind: kind.unwrap_or(types::DependencyKind::Hard),
            description,
            created_at: chrono::Utc::now(),
        };
        match self.guard(self.store.add_dependency(&dependency)).await {
            Err(StoreError::Conflict(_)) => {
                return Err(RegistryError::Conflict(format!(
                    "{} already depends on {}",
                    *data.service.name, *dependency.depends_on
                )));
            }
            Err(StoreError::NotFound) => return Err(not_found_service(service_id)),
            other => other?,
        }
        self.refresh_after_commit(service_id).await;
        Ok(dependency)
    }

    pub fn get_dependency(&self, service_id: Uuid, id: Uuid) -> Result<types::Dependency> {
        let data = self.service_data(service_id)?;
        data.dependencies
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("no dependency {id}")))
    }

    pub async fn delete_dependency(&self, service_id: Uuid, id: Uuid) -> Result<()> {
        match self.guard(self.store.delete_dependency(service_id, id)).await {
            Err(StoreError::NotFound) => return Err(RegistryError::NotFound(format!("no dependency {id}"))),
            other => other?,
        }
        self.refresh_after_commit(service_id).await;
        Ok(())
    }

    pub fn dependency_graph(&self, root: Option<&str>) -> Result<types::DependencyGraph> {
        let snapshot = self.snapshot();
        let root = match root {
            Some(root) => {
                Some(snapshot.service_by_name(root).ok_or_else(|| not_found_name(root))?.service.name.clone())
            }
            None => None,
        };
        Ok(graph::build(&snapshot, root.as_ref()))
    }

    pub fn traffic_policy(&self, service_id: Uuid) -> Result<types::TrafficPolicy> {
        Ok(self.service_data(service_id)?.policy.clone())
    }

    pub async fn replace_traffic_policy(
        &self,
        service_id: Uuid,
        spec: types::TrafficPolicySpec,
        if_match: Option<i64>,
    ) -> Result<types::TrafficPolicy> {
        let current =
            self.guard(self.store.load_service(service_id)).await?.ok_or_else(|| not_found_service(service_id))?;
        let current_revision = current.policy.revision;
        let revision = current_revision.get() as i64;
        if let Some(expected) = if_match
            && expected != revision
        {
            return Err(RegistryError::PreconditionFailed(format!(
                "if-match revision {expected} but the current revision is {revision}"
            )));
        }
        if spec.retries.per_try_timeout_ms.get() > spec.request_timeout_ms.get() {
            return Err(RegistryError::Invalid("retries.per_try_timeout_ms cannot exceed request_timeout_ms".into()));
        }
        let policy = model::traffic_policy(spec, &current.service, chrono::Utc::now(), next_revision(current_revision));
        match self.guard(self.store.replace_policy(&policy, revision)).await {
            Err(StoreError::Stale { expected, actual }) => {
                return Err(RegistryError::PreconditionFailed(format!(
                    "the policy changed concurrently (revision {expected} is now {actual}); read it again"
                )));
            }
            other => other?,
        }
        Ok(self.refresh_after_commit(service_id).await.map_or(policy, |data| data.policy.clone()))
    }

    /// Configuration belongs to registered services.
    fn config_service(&self, service: &str) -> Result<types::ServiceName> {
        let snapshot = self.snapshot();
        let data = snapshot.service_by_name(service).ok_or_else(|| not_found_name(service))?;
        Ok(data.service.name.clone())
    }

    fn config_key(&self, service: &str, environment: types::Environment, key: &str) -> Result<ConfigKey> {
        let service = self.config_service(service)?;
        // The router has checked the key against the contract's pattern.
        let key = key.parse().map_err(|error| RegistryError::Invalid(format!("key {key:?}: {error}")))?;
        Ok(ConfigKey { service, environment, key })
    }

    pub async fn list_config(
        &self,
        service: &str,
        environment: types::Environment,
        prefix: Option<&str>,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page<types::ConfigEntry>> {
        let service = self.config_service(service)?;
        let environment = environment.to_string();
        let after = after.map(cursor::decode).transpose()?;
        let listed = self.store.list_config(
            service.as_str(),
            &environment,
            prefix.unwrap_or(""),
            after.as_deref(),
            limit as i64 + 1,
        );
        let items = self.guard(listed).await?;
        page(items, limit, |entry| entry.key.to_string())
    }

    pub async fn get_config(
        &self,
        service: &str,
        environment: types::Environment,
        key: &str,
    ) -> Result<types::ConfigEntry> {
        let key = self.config_key(service, environment, key)?;
        self.guard(self.store.get_config(&key)).await?.ok_or_else(|| not_found_key(&key))
    }

    pub async fn put_config(
        &self,
        service: &str,
        environment: types::Environment,
        key: &str,
        write: types::ConfigWrite,
        if_match: Option<i64>,
        changed_by: &str,
    ) -> Result<types::ConfigEntry> {
        let key = self.config_key(service, environment, key)?;
        let expected = match (write.expected_version, if_match) {
            (Some(body), Some(header)) if body != header => {
                return Err(RegistryError::ConflictingPreconditions(format!(
                    "expected_version {body} and If-Match \"{header}\" disagree; send one of them"
                )));
            }
            (body, header) => body.or(header),
        };
        let put = self.store.put_config(&key, &write.value, write.description.as_ref(), expected, changed_by);
        match self.guard(put).await {
            Ok(entry) => Ok(entry),
            Err(StoreError::Stale { expected, actual }) if if_match.is_some() && write.expected_version.is_none() => {
                Err(RegistryError::PreconditionFailed(stale_message(expected, actual)))
            }
            Err(StoreError::Stale { expected, actual }) => {
                Err(RegistryError::Conflict(stale_message(expected, actual)))
            }
            Err(StoreError::Conflict(_)) => {
                Err(RegistryError::Conflict("the entry changed concurrently; read it again".into()))
            }
            Err(other) => Err(other.into()),
        }
    }

    pub async fn delete_config(
        &self,
        service: &str,
        environment: types::Environment,
        key: &str,
        expected: Option<i64>,
        changed_by: &str,
    ) -> Result<()> {
        let key = self.config_key(service, environment, key)?;
        match self.guard(self.store.delete_config(&key, expected, changed_by)).await {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound) => Err(not_found_key(&key)),
            Err(StoreError::Stale { expected, actual }) => {
                Err(RegistryError::Conflict(stale_message(expected, actual)))
            }
            Err(StoreError::Conflict(_)) => {
                Err(RegistryError::Conflict("the entry changed concurrently; read it again".into()))
            }
            Err(other) => Err(other.into()),
        }
    }

    pub async fn config_history(
        &self,
        service: &str,
        environment: types::Environment,
        key: &str,
        limit: u64,
        after: Option<&str>,
    ) -> Result<Page<types::ConfigVersion>> {
        let key = self.config_key(service, environment, key)?;
        let before = match after.map(cursor::decode).transpose()? {
            Some(text) => {
                Some(text.parse::<i64>().map_err(|_| RegistryError::BadCursor("cursor is not valid".into()))?)
            }
            None => None,
        };
        let items = self.guard(self.store.config_history(&key, before, limit as i64 + 1)).await?;
        if items.is_empty() && before.is_none() {
            return Err(not_found_key(&key));
        }
        page(items, limit, |version| version.version.to_string())
    }
}

/// Idempotency keys written before this instant (ms since the epoch) are past their
/// lifetime at `now_ms`: forgotten by the periodic purge, not honoured by a retry.
pub fn idempotency_horizon_ms(now_ms: i64) -> i64 {
    now_ms - IDEMPOTENCY_KEY_LIFETIME.as_millis() as i64
}

fn stale_message(expected: i64, actual: i64) -> String {
    if actual == 0 {
        format!("expected version {expected} but the key does not exist")
    } else {
        format!("expected version {expected} but the current version is {actual}")
    }
}

fn not_found_service(id: Uuid) -> RegistryError {
    RegistryError::NotFound(format!("no service {id}"))
}

fn not_found_name(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("no service named {name}"))
}

fn not_found_instance(id: Uuid) -> RegistryError {
    RegistryError::NotFound(format!("no instance {id}"))
}

fn not_found_key(key: &ConfigKey) -> RegistryError {
    RegistryError::NotFound(format!("no key {} for {} in {}", *key.key, *key.service, key.environment))
}

/// Marks lapsed instances critical and removes those past their critical period. Every
/// replica runs it; the conditional updates make the work idempotent.
/// While the store's breaker is open it waits for the probe; a failure that says the store
/// is unreachable opens the breaker, so requests fail fast even before one has tried.
async fn reap_loop(store: Store, snapshot: Arc<SnapshotCell>, breaker: Arc<StoreBreaker>) {
    let mut interval = tokio::time::interval(REAP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        interval.tick().await;
        if breaker.is_open() {
            continue;
        }
        let result = async {
            let mut touched = store.expire_instances().await?;
            touched.extend(store.reap_instances().await?);
            touched.sort();
            touched.dedup();
            for id in touched {
                snapshot.refresh_service(&store, id).await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        breaker.record(&result);
        match result {
            Ok(()) if failing => {
                tracing::info!("instance expiry is running again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "instance expiry paused: the store is failing");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Reloads everything now and then, so that no missed notification lasts, and forgets
/// idempotency keys past their lifetime. Skipped while the store's breaker is open.
async fn reload_loop(store: Store, snapshot: Arc<SnapshotCell>, breaker: Arc<StoreBreaker>) {
    let mut interval = tokio::time::interval(FULL_RELOAD_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = breaker.guard(snapshot.reload_all(&store)).await {
            tracing::debug!(%error, "periodic snapshot reload failed");
        }
        if let Err(error) = breaker.guard(store.purge_idempotency_keys(idempotency_horizon_ms(now_ms()))).await {
            tracing::debug!(%error, "forgetting expired idempotency keys failed");
        }
    }
}

/// `value` as JSON text with every object's members sorted by name: two requests that
/// mean the same compare equal as text, whatever order their members came in.
fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(members) => {
                let mut names: Vec<&String> = members.keys().collect();
                names.sort();
                serde_json::Value::Object(
                    names.into_iter().map(|name| (name.clone(), sorted(&members[name]))).collect(),
                )
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// Follows `NOTIFY`s from every replica. A lost connection may have dropped
/// notifications, so each reconnection is followed by a full reload.
async fn listen_loop(store: Store, snapshot: Arc<SnapshotCell>) {
    let Some(pool) = store.postgres_pool().cloned() else { return };
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "change listener cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(crate::store::CHANGE_CHANNEL).await {
            tracing::debug!(%error, "change listener cannot listen; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if let Err(error) = snapshot.reload_all(&store).await {
            tracing::debug!(%error, "snapshot reload after (re)connecting failed");
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Ok(id) = notification.payload().parse::<Uuid>()
                        && let Err(error) = snapshot.refresh_service(&store, id).await
                    {
                        tracing::debug!(%error, "snapshot refresh failed");
                    }
                }
                Ok(None) => {
                    tracing::info!("change listener reconnected; reloading the snapshot");
                    if let Err(error) = snapshot.reload_all(&store).await {
                        tracing::debug!(%error, "snapshot reload failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "change listener lost its connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
