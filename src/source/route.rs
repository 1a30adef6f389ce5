//! Where a collection's events go: its topic, and the facts every event of it carries.
//! A collection reader has one route; a database reader finds each collection's route on
//! its first event (creating the topic when missing), so collections created later need
//! no discovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::convert::Origin;
use super::errors::ReaderError;
use crate::event::Namespace;
use crate::kafka::admin::TopicAdmin;
use crate::kafka::KafkaConfig;

/// One collection's destination.
#[derive(Debug)]
pub struct Route {
    /// `db.coll`: status, metrics and log label.
    pub ns: String,
    pub topic: String,
    pub origin: Origin,
}

/// Creates collection topics with the configured partitions and limits, and reads each
/// topic's own message limit.
#[derive(Clone)]
pub struct Topics {
    pub admin: TopicAdmin,
    pub kafka: KafkaConfig,
}

impl Topics {
    /// Makes sure `db.coll`'s topic exists; returns it and the largest message it takes:
    /// `kafka.max_message_bytes`, or the topic's own limit when that is smaller (an
    /// existing topic created with less). Larger events go in parts (see `crate::parts`).
    pub async fn ensure(&self, db: &str, coll: &str) -> Result<(String, usize), crate::kafka::admin::TopicError> {
        let (mut topics, limit) = self.ensure_all(db, &[coll.to_string()]).await?;
        Ok((topics.remove(0), limit))
    }

    /// `ensure` for many collections of `db` in a few requests: their topics (in the
    /// order of `colls`) and the smallest message limit among them.
    pub async fn ensure_all(&self, db: &str, colls: &[String]) -> Result<(Vec<String>, usize), crate::kafka::admin::TopicError> {
        let names: Vec<String> = colls.iter().map(|c| self.kafka.topic_for(db, c)).collect();
        let configured = self.kafka.max_message_bytes;
        let topic_configs = [("max.message.bytes", configured.to_string())];
        self.admin.ensure_topics(&names, self.kafka.partitions, self.kafka.replication_factor, &topic_configs).await?;
        let limit = self.limits(&names).await.into_values().min().unwrap_or(configured);
        Ok((names, limit))
    }

    /// The largest message each topic takes, where the topic's own limit is below
    /// `kafka.max_message_bytes` (one request for all; unreadable: the configured one).
    async fn limits(&self, topics: &[String]) -> HashMap<String, usize> {
        let configured = self.kafka.max_message_bytes;
        match self.admin.topics_max_message_bytes(topics).await {
            Ok(limits) => limits
                .into_iter()
                .filter(|(_, limit)| *limit < configured)
                .inspect(|(topic, limit)| warn!(topic, limit, configured, "the topic takes messages of at most {limit} bytes, less than kafka.max_message_bytes: larger events are sent in parts of that size"))
                .collect(),
            Err(e) => {
                warn!("cannot read the topics' max.message.bytes ({e}); using kafka.max_message_bytes ({configured})");
                HashMap::new()
            }
        }
    }
}

/// The routes of one database's collections, found on first use. Every route of a
/// database reader shares the reader's message limit (the smallest of its topics').
pub struct Routes {
    db: String,
    name: String,
    rs: String,
    topics: Topics,
    max_bytes: Arc<AtomicUsize>,
    known: Mutex<HashMap<String, Arc<Route>>>,
}

impl Routes {
    pub fn new(db: &str, name: &str, rs: &str, topics: Topics, max_bytes: Arc<AtomicUsize>) -> Self {
        Routes {
            db: db.to_string(),
            name: name.to_string(),
            rs: rs.to_string(),
            topics,
            max_bytes,
            known: Mutex::default(),
        }
    }

    /// `coll`'s route; its topic is made ready first when this process has not seen it.
    pub async fn get(&self, coll: &str) -> Result<Arc<Route>, ReaderError> {
        if let Some(route) = self.known(coll) {
            return Ok(route);
        }
        self.prepare(&[coll.to_string()]).await?;
        self.known(coll).ok_or_else(|| ReaderError::Encode { ns: format!("{}.{coll}", self.db), message: "the collection's route was not kept".into() })
    }

    fn known(&self, coll: &str) -> Option<Arc<Route>> {
        self.known.lock().ok().and_then(|k| k.get(coll).cloned())
    }

    fn route(&self, coll: &str, topic: String) -> Arc<Route> {
        let origin = Origin { ns: Namespace::new(&self.db, coll), name: self.name.clone(), rs: self.rs.clone() };
        Arc::new(Route { ns: format!("{}.{coll}", self.db), topic, origin })
    }

    /// Makes the routes of `colls` ready at once: their topics created and their limits
    /// read in a few requests, not a few per collection.
    pub async fn prepare(&self, colls: &[String]) -> Result<(), ReaderError> {
        let new: Vec<String> = match self.known.lock() {
            Ok(known) => colls.iter().filter(|c| !known.contains_key(*c)).cloned().collect(),
            Err(_) => return Ok(()),
        };
        if new.is_empty() {
            return Ok(());
        }
        let (names, limit) = self.topics.ensure_all(&self.db, &new).await.map_err(|e| {
            let ns = match new.as_slice() {
                [one] => format!("{}.{one}", self.db),
                _ => format!("{}.*", self.db),
            };
            ReaderError::Delivery { ns, message: format!("cannot make the collections' topics ready: {e}") }
        })?;
        self.max_bytes.fetch_min(limit, Ordering::Relaxed);
        let routes: Vec<(String, Arc<Route>)> = new.into_iter().zip(names).map(|(coll, topic)| {
            let route = self.route(&coll, topic);
            (coll, route)
        }).collect();
        if let Ok(mut known) = self.known.lock() {
            for (coll, route) in routes {
                known.entry(coll).or_insert(route);
            }
        }
        Ok(())
    }

    /// Every route found so far.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.known.lock().map(|k| k.values().cloned().collect()).unwrap_or_default()
    }
}
