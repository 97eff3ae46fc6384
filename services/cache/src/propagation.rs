//! Invalidations between replicas: Redis pub/sub on `{prefix}cache:invalidations`.
//!
//! The replica that runs an invalidation deletes from L2 and its own L1, then publishes a
//! [`Message`]; every replica's subscriber task removes the matching entries from its L1.
//! Pub/sub is fire-and-forget: a replica whose subscription is down misses messages, so the
//! subscriber clears the whole L1 each time it (re)subscribes after a loss. A lost connection
//! is noticed when Redis closes it, or by a periodic PING for silent losses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSub;
use redis::{Client, RedisError, RedisResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::l1::{L1, Selector};

/// First delay before resubscribing; doubled per failed attempt up to [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);
/// How often an idle subscription is checked with PING.
const PING_EVERY: Duration = Duration::from_secs(5);

/// What is published per invalidation (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The invalidation's id, as returned to the caller and logged everywhere.
    pub(crate) id: Uuid,
    /// `replica_id` of the publisher, for logs.
    pub(crate) origin: String,
    /// Process instance of the publisher: a replica ignores its own messages by this id, which
    /// is unique even if two replicas are configured with the same `replica_id`.
    pub(crate) instance: Uuid,
    pub(crate) keys: Vec<String>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) tags: Vec<String>,
}

/// The subscriber task's state.
pub(crate) struct Subscriber {
    pub(crate) client: Client,
    pub(crate) channel: String,
    pub(crate) instance: Uuid,
    pub(crate) l1: Arc<L1>,
    /// Whether the subscription is established (read to compute `propagated_to`).
    pub(crate) active: Arc<AtomicBool>,
    /// Bound of each connect, subscribe and ping.
    pub(crate) bound: Duration,
}

impl Subscriber {
    /// Opens a dedicated pub/sub connection and subscribes to the channel.
    pub(crate) async fn subscribe(&self) -> RedisResult<PubSub> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(self.bound, attempt).await.unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "subscribing timed out")))
        })
    }

    /// Listens forever, resubscribing with backoff after losses. `initial` is a subscription
    /// made at start, before anything was cached (so L1 is not cleared for it).
    pub(crate) async fn run(self, mut initial: Option<PubSub>) {
        let mut retry = MIN_RETRY;
        let mut down_logged = false;
        loop {
            let pubsub = match initial.take() {
                Some(pubsub) => pubsub,
                None => match self.subscribe().await {
                    Ok(pubsub) => {
                        // Messages published while unsubscribed are lost: forget everything
                        // that may have been invalidated meanwhile. Messages from now on are
                        // queued in the subscription, so nothing falls between.
                        self.l1.clear();
                        tracing::info!(
                            channel = %self.channel,
                            "response cache: invalidation subscription (re)established; L1 cleared"
                        );
                        pubsub
                    }
                    Err(error) => {
                        if !down_logged {
                            tracing::warn!(
                                channel = %self.channel,
                                %error,
                                "response cache: cannot subscribe to invalidations; retrying"
                            );
                            down_logged = true;
                        }
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                        continue;
                    }
                },
            };
            retry = MIN_RETRY;
            self.active.store(true, Ordering::Release);
            self.listen(pubsub).await;
            self.active.store(false, Ordering::Release);
            // Warned here; further failed attempts stay quiet until the next success.
            tracing::warn!(channel = %self.channel, "response cache: invalidation subscription lost; resubscribing");
            down_logged = true;
        }
    }

    /// Applies messages until the subscription is lost.
    async fn listen(&self, pubsub: PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.apply(message.get_payload_bytes()),
                    None => return,
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.bound, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    fn apply(&self, payload: &[u8]) {
        let message: Message = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "response cache: ignoring a malformed invalidation message");
                return;
            }
        };
        if message.instance == self.instance {
            return;
        }
        let removed = self.l1.remove_matching(&Selector::new(&message.keys, &message.prefixes, &message.tags));
        tracing::debug!(
            id = %message.id,
            origin = %message.origin,
            removed = removed.len(),
            "response cache: applied invalidation from another replica"
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{CacheKey, CachedResponse, now_ms};

    #[test]
    fn applies_other_replicas_messages_and_ignores_its_own_and_garbage() {
        let l1 = Arc::new(L1::new(1 << 20, 1 << 16));
        let key = CacheKey::new("GET", "/a?b", "-", []);
        let entry = Arc::new(CachedResponse {
            status: 200,
            headers: vec![],
            body: Bytes::new(),
            tags: vec![],
            route: "r".into(),
            stored_at_ms: now_ms(),
            expires_at_ms: now_ms() + 60_000,
        });
        l1.insert(key.clone(), entry);
        let subscriber = Subscriber {
            client: Client::open("redis://127.0.0.1:1").expect("url"),
            channel: "c".into(),
            instance: Uuid::new_v4(),
            l1: l1.clone(),
            active: Arc::new(AtomicBool::new(false)),
            bound: Duration::from_millis(10),
        };
        let message = |instance| Message {
            id: Uuid::new_v4(),
            origin: "x".into(),
            instance,
            keys: vec!["/a?b".into()],
            prefixes: vec![],
            tags: vec![],
        };
        subscriber.apply(b"not json");
        subscriber.apply(&serde_json::to_vec(&message(subscriber.instance)).expect("json"));
        assert!(l1.get(&key).is_some(), "own message ignored");
        subscriber.apply(&serde_json::to_vec(&message(Uuid::new_v4())).expect("json"));
        assert!(l1.get(&key).is_none(), "other replica's message applied");
    }
}
