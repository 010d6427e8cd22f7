use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};

/// Breakers without a lease (kept because they remember failures, an open or half-open
/// state) a registry keeps at most. Past it, idle breakers go in this order: those at rest,
/// then closed ones counting failures, then open and half-open ones last (forgetting one
/// forgets an outage); within each, the least recently used first.
pub const MAX_IDLE_BREAKERS: usize = 1024;

struct Entry {
    breaker: CircuitBreaker,
    leases: usize,
    /// The registry's use counter when the entry was last leased or looked up.
    last_used: u64,
}

impl Entry {
    /// Which idle breakers go first: 0 at rest, 1 counting failures, 2 open, half-open or set
    /// by hand (forgetting one forgets an outage, or an operator's decision).
    fn keep_rank(&self) -> u8 {
        match self.breaker.state() {
            BreakerState::Open
            | BreakerState::HalfOpen
            | BreakerState::Disabled
            | BreakerState::ForcedOpen => 2,
            BreakerState::Closed if self.breaker.is_at_rest() => 0,
            BreakerState::Closed => 1,
        }
    }
}

struct Shared<K> {
    config: BreakerConfig,
    map: Mutex<HashMap<K, Entry>>,
    /// Counts uses, to order entries by recency.
    uses: AtomicU64,
}

/// One breaker per key (typically a host), created on first use with a shared config.
/// Breakers of different keys are independent. Cheap to clone; clones share the map.
///
/// ```
/// use telemetry_breaker::{BreakerConfig, CircuitBreakerRegistry};
/// let registry = CircuitBreakerRegistry::new(BreakerConfig::default());
/// let lease = registry.lease("a.example".to_string());
/// assert_eq!(registry.len(), 1);
/// drop(lease); // the last user left: the breaker is removed
/// assert!(registry.is_empty());
/// ```
pub struct CircuitBreakerRegistry<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for CircuitBreakerRegistry<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for CircuitBreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.shared.map.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("CircuitBreakerRegistry")
            .field("keys", &map.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<K: Eq + Hash + Clone + fmt::Debug> CircuitBreakerRegistry<K> {
    /// An empty registry whose breakers use `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                map: Mutex::new(HashMap::new()),
                uses: AtomicU64::new(0),
            }),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<K, Entry>> {
        // No code inside these critical sections panics; a poisoned map is still usable.
        self.shared.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<K, Entry>,
        key: &K,
        config: Option<&BreakerConfig>,
    ) -> &'a mut Entry {
        let now = self.shared.uses.fetch_add(1, Ordering::Relaxed);
        let entry = map.entry(key.clone()).or_insert_with(|| Entry {
            breaker: CircuitBreaker::new(
                name_of(key),
                config.unwrap_or(&self.shared.config).clone(),
            ),
            leases: 0,
            last_used: now,
        });
        entry.last_used = now;
        entry
    }

    /// Makes room for one more idle breaker: removes the idle entries past
    /// [`MAX_IDLE_BREAKERS`], at rest first, open and half-open last, least recently used
    /// first within each.
    fn evict_idle(map: &mut HashMap<K, Entry>) {
        let mut idle: Vec<(u8, u64, &K)> = map
            .iter()
            .filter(|(_, e)| e.leases == 0)
            .map(|(k, e)| (e.keep_rank(), e.last_used, k))
            .collect();
        if idle.len() < MAX_IDLE_BREAKERS {
            return;
        }
        let excess = idle.len() + 1 - MAX_IDLE_BREAKERS;
        idle.sort_unstable_by_key(|(rank, used, _)| (*rank, *used));
        let victims: Vec<K> = idle
            .into_iter()
            .take(excess)
            .map(|(_, _, k)| k.clone())
            .collect();
        for k in victims {
            map.remove(&k);
        }
    }

    /// The breaker for `key`, created if absent. Without a [`lease`](Self::lease) it is
    /// idle: it stays until [`remove`](Self::remove), or until more than
    /// [`MAX_IDLE_BREAKERS`] are idle and it is among those evicted (at rest first, open
    /// last, least recently used first).
    pub fn get_or_create(&self, key: K) -> CircuitBreaker {
        let mut map = self.map();
        self.entry(&mut map, &key, None).breaker.clone()
    }

    /// [`get_or_create`](Self::get_or_create) with `config` for this key, if the breaker is
    /// created now (an existing one keeps its own).
    pub fn get_or_create_with(&self, key: K, config: &BreakerConfig) -> CircuitBreaker {
        let mut map = self.map();
        self.entry(&mut map, &key, Some(config)).breaker.clone()
    }

    /// Every key with its breaker, in no particular order (a snapshot: e.g. to export their
    /// states as metrics).
    pub fn breakers(&self) -> Vec<(K, CircuitBreaker)> {
        self.map()
            .iter()
            .map(|(k, e)| (k.clone(), e.breaker.clone()))
            .collect()
    }

    /// The breaker for `key`, if present (a use: it counts as recent for eviction).
    pub fn get(&self, key: &K) -> Option<CircuitBreaker> {
        let now = self.shared.uses.fetch_add(1, Ordering::Relaxed);
        self.map().get_mut(key).map(|e| {
            e.last_used = now;
            e.breaker.clone()
        })
    }

    /// A reference-counted use of `key`'s breaker. When the last lease is dropped a breaker
    /// at rest ([`CircuitBreaker::is_at_rest`]) is removed; one that is open, half-open or
    /// counting failures stays, so that the next user of the key (a driver opening one
    /// connection per request) carries on where the last one left off. At most
    /// [`MAX_IDLE_BREAKERS`] breakers without a lease are kept (see there for which go).
    pub fn lease(&self, key: K) -> BreakerLease<K> {
        self.lease_inner(key, None)
    }

    /// [`lease`](Self::lease) with `config` for this key, if its breaker is created now (an
    /// existing one keeps its own): one registry for endpoints that need different settings.
    pub fn lease_with(&self, key: K, config: &BreakerConfig) -> BreakerLease<K> {
        self.lease_inner(key, Some(config))
    }

    fn lease_inner(&self, key: K, config: Option<&BreakerConfig>) -> BreakerLease<K> {
        let mut map = self.map();
        if !map.contains_key(&key) {
            Self::evict_idle(&mut map);
        }
        let entry = self.entry(&mut map, &key, config);
        entry.leases += 1;
        BreakerLease {
            breaker: entry.breaker.clone(),
            registry: self.clone(),
            key,
        }
    }

    /// Removes `key`'s breaker now (outstanding leases keep their clone working).
    pub fn remove(&self, key: &K) -> Option<CircuitBreaker> {
        self.map().remove(key).map(|e| e.breaker)
    }

    /// Number of breakers.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A breaker's name from its key: the key's `Debug` form, without the quotes a string's has
/// (`a.example`, `("a.example", 443)`).
fn name_of<K: fmt::Debug>(key: &K) -> String {
    let name = format!("{key:?}");
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => inner.to_owned(),
        _ => name,
    }
}

/// A use of one key's breaker; see [`CircuitBreakerRegistry::lease`].
pub struct BreakerLease<K: Eq + Hash + Clone + fmt::Debug> {
    breaker: CircuitBreaker,
    registry: CircuitBreakerRegistry<K>,
    key: K,
}

impl<K: Eq + Hash + Clone + fmt::Debug> BreakerLease<K> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<K: Eq + Hash + Clone + fmt::Debug> fmt::Debug for BreakerLease<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLease")
            .field("key", &self.key)
            .finish()
    }
}

impl<K: Eq + Hash + Clone + fmt::Debug> Drop for BreakerLease<K> {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        if let Some(entry) = map.get_mut(&self.key) {
            // Only the entry this lease belongs to (not one re-created after a remove).
            if Arc::ptr_eq(entry.breaker.inner_arc(), self.breaker.inner_arc()) {
                entry.leases = entry.leases.saturating_sub(1);
                if entry.leases == 0 && entry.breaker.is_at_rest() {
                    map.remove(&self.key);
                }
            }
        }
    }
}
