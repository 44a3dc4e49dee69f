//! Which models the daemon's guest holds. One guest serves every model: several stay
//! resident under one budget (`guest.memory_max`, the guest's private memory) and at most
//! as many as its device takes, so a request for a resident model never reboots or reloads
//! anything. A model that does not fit pushes out the least recently used ones that have no
//! request in flight. Each also keeps the keep-alive of its last request: once it has been
//! idle that long it is [`Residency::expired`]. This is the bookkeeping only; the worker
//! carries out the unloads and loads it decides.

use super::keep_alive::KeepAlive;
use std::time::{Duration, Instant, SystemTime};

/// A model in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resident {
    name: String,
    guest_id: u32,
    bytes: u64,
    last_used: u64,
    /// When its last request ended (or it was loaded).
    idle_since: Instant,
    /// How long it stays once idle: as its last request asked.
    keep_alive: KeepAlive,
}

/// A resident model whose keep-alive ran out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub guest_id: u32,
    pub name: String,
    /// How long it has been idle.
    pub idle: Duration,
    pub keep_alive: KeepAlive,
}

/// A resident model as the HTTP side sees it (Ollama's `/api/ps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidentView {
    pub name: String,
    /// Its share of the guest's private memory: weights, KV caches, buffers.
    pub bytes: u64,
    /// When its keep-alive runs out if no request comes (`None`: never). A model with a
    /// request in flight shows the end of its previous one.
    pub expires: Option<SystemTime>,
}

/// What it takes to serve a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Resident, as this guest model id.
    Resident(u32),
    /// Unload `evict` (guest model ids, least recently used first), then load the model as
    /// `guest_id`.
    Load { guest_id: u32, evict: Vec<u32> },
    /// It fits only once a model with requests in flight is unloaded: wait for them.
    Wait,
}

/// Where a prefetched model can go: into free budget only, never in place of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Already resident: nothing to do.
    Resident,
    /// Load it as this guest model id.
    Load(u32),
    /// The free budget (`free` bytes) or the device's model count has no room for it.
    NoRoom { free: u64 },
}

/// The resident models and their budget.
#[derive(Debug)]
pub struct Residency {
    budget: u64,
    max_models: usize,
    next_guest_id: u32,
    clock: u64,
    resident: Vec<Resident>,
}

impl Residency {
    /// No model resident yet; `budget` bytes and `max_models` models at most.
    pub fn new(budget: u64, max_models: usize) -> Self {
        Self {
            budget,
            max_models: max_models.max(1),
            next_guest_id: 1,
            clock: 0,
            resident: Vec::new(),
        }
    }

    /// How to serve `name`, which needs `bytes` of the budget; `busy(guest_id)` says whether
    /// a resident model has requests in flight (it is never chosen for unloading). Using a
    /// resident model makes it the most recently used.
    pub fn place(&mut self, name: &str, bytes: u64, busy: &dyn Fn(u32) -> bool) -> Placement {
        self.clock += 1;
        if let Some(r) = self.resident.iter_mut().find(|r| r.name == name) {
            r.last_used = self.clock;
            return Placement::Resident(r.guest_id);
        }
        let mut by_age: Vec<&Resident> = self.resident.iter().collect();
        by_age.sort_by_key(|r| r.last_used);
        let (mut used, mut count) = (self.used(), self.resident.len());
        let mut evict = Vec::new();
        for r in by_age {
            if used.saturating_add(bytes) <= self.budget && count < self.max_models {
                break;
            }
            if busy(r.guest_id) {
                continue;
            }
            evict.push(r.guest_id);
            used -= r.bytes;
            count -= 1;
        }
        if used.saturating_add(bytes) > self.budget || count >= self.max_models {
            return Placement::Wait;
        }
        let guest_id = self.next_guest_id;
        self.next_guest_id = self.next_guest_id.wrapping_add(1).max(1);
        Placement::Load { guest_id, evict }
    }

    /// Where `name`, which needs `bytes`, can be prefetched. Unlike [`Self::place`] it
    /// unloads nothing (the models resident may be answering, or be asked again soon) and
    /// leaves the recency of the resident ones as it is.
    pub fn place_free(&mut self, name: &str, bytes: u64) -> Prefetch {
        if self.resident.iter().any(|r| r.name == name) {
            return Prefetch::Resident;
        }
        let free = self.budget.saturating_sub(self.used());
        if bytes > free || self.resident.len() >= self.max_models {
            return Prefetch::NoRoom { free };
        }
        let guest_id = self.next_guest_id;
        self.next_guest_id = self.next_guest_id.wrapping_add(1).max(1);
        Prefetch::Load(guest_id)
    }

    /// `name` is now resident as `guest_id` (its load succeeded at `now`; until a request
    /// on it ends it stays `keep_alive`).
    pub fn loaded(
        &mut self,
        name: &str,
        guest_id: u32,
        bytes: u64,
        keep_alive: KeepAlive,
        now: Instant,
    ) {
        self.clock += 1;
        self.resident.push(Resident {
            name: name.to_string(),
            guest_id,
            bytes,
            last_used: self.clock,
            idle_since: now,
            keep_alive,
        });
    }

    /// A request on guest model `guest_id` ended at `now`, asking it to stay `keep_alive`
    /// (the last request's keep-alive wins).
    pub fn released(&mut self, guest_id: u32, keep_alive: KeepAlive, now: Instant) {
        if let Some(r) = self.resident.iter_mut().find(|r| r.guest_id == guest_id) {
            r.idle_since = now;
            r.keep_alive = keep_alive;
        }
    }

    /// The models without requests in flight (`busy`) whose keep-alive has run out at `now`.
    pub fn expired(&self, now: Instant, busy: &dyn Fn(u32) -> bool) -> Vec<Expired> {
        self.resident
            .iter()
            .filter(|r| !busy(r.guest_id) && r.keep_alive.expired(r.idle_since, now))
            .map(|r| Expired {
                guest_id: r.guest_id,
                name: r.name.clone(),
                idle: now.saturating_duration_since(r.idle_since),
                keep_alive: r.keep_alive,
            })
            .collect()
    }

    /// Guest model `guest_id` was unloaded.
    pub fn unloaded(&mut self, guest_id: u32) {
        self.resident.retain(|r| r.guest_id != guest_id);
    }

    /// The name of guest model `guest_id`, if resident.
    pub fn name_of(&self, guest_id: u32) -> Option<&str> {
        self.resident
            .iter()
            .find(|r| r.guest_id == guest_id)
            .map(|r| r.name.as_str())
    }

    /// The budget guest model `guest_id` takes, if resident.
    pub fn bytes_of(&self, guest_id: u32) -> Option<u64> {
        self.resident
            .iter()
            .find(|r| r.guest_id == guest_id)
            .map(|r| r.bytes)
    }

    /// How many models are resident.
    pub fn len(&self) -> usize {
        self.resident.len()
    }

    /// Whether no model is resident.
    pub fn is_empty(&self) -> bool {
        self.resident.is_empty()
    }

    /// The resident models, with their expiry on the wall clock (`now` and `wall` are the
    /// same moment on both clocks).
    pub fn view(&self, now: Instant, wall: SystemTime) -> Vec<ResidentView> {
        let at = |r: &Resident| match r.keep_alive {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => {
                let end = r.idle_since.checked_add(d)?;
                match end.checked_duration_since(now) {
                    Some(ahead) => wall.checked_add(ahead),
                    None => wall.checked_sub(now.saturating_duration_since(end)),
                }
            }
        };
        self.resident
            .iter()
            .map(|r| ResidentView {
                name: r.name.clone(),
                bytes: r.bytes,
                expires: at(r),
            })
            .collect()
    }

    /// Bytes of the budget the resident models take.
    pub fn used(&self) -> u64 {
        self.resident.iter().map(|r| r.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn idle(_: u32) -> bool {
        false
    }

    fn load(r: &mut Residency, name: &str, bytes: u64) -> u32 {
        match r.place(name, bytes, &idle) {
            Placement::Load { guest_id, evict } => {
                evict.iter().for_each(|id| r.unloaded(*id));
                r.loaded(name, guest_id, bytes, KeepAlive::Forever, Instant::now());
                guest_id
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn a_resident_model_is_served_as_it_is() {
        let mut r = Residency::new(4 * GIB, 4);
        let a = load(&mut r, "a", GIB);
        let b = load(&mut r, "b", GIB);
        assert_ne!(a, b);
        assert_eq!(r.place("a", GIB, &idle), Placement::Resident(a));
        assert_eq!(r.place("b", GIB, &idle), Placement::Resident(b));
        assert_eq!((r.len(), r.used()), (2, 2 * GIB));
    }

    #[test]
    fn the_least_recently_used_model_goes_first() {
        let mut r = Residency::new(3 * GIB, 4);
        let a = load(&mut r, "a", GIB);
        let b = load(&mut r, "b", GIB);
        let _c = load(&mut r, "c", GIB);
        // `a` used again: `b` is now the oldest.
        assert_eq!(r.place("a", GIB, &idle), Placement::Resident(a));
        match r.place("d", GIB, &idle) {
            Placement::Load { evict, .. } => assert_eq!(evict, vec![b]),
            other => panic!("{other:?}"),
        }
        // Two gigabytes need two of them, oldest first.
        match r.place("e", 2 * GIB, &idle) {
            Placement::Load { evict, .. } => assert_eq!(evict.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_model_in_use_is_never_unloaded() {
        let mut r = Residency::new(2 * GIB, 4);
        let a = load(&mut r, "a", GIB);
        let b = load(&mut r, "b", GIB);
        let busy_a = move |id: u32| id == a;
        match r.place("c", GIB, &busy_a) {
            Placement::Load { evict, .. } => assert_eq!(evict, vec![b]),
            other => panic!("{other:?}"),
        }
        let both_busy = move |id: u32| id == a || id == b;
        assert_eq!(r.place("c", GIB, &both_busy), Placement::Wait);
        assert_eq!(r.place("c", 2 * GIB, &busy_a), Placement::Wait);
    }

    #[test]
    fn the_device_limit_on_models_counts_too() {
        let mut r = Residency::new(100 * GIB, 2);
        let a = load(&mut r, "a", GIB);
        load(&mut r, "b", GIB);
        match r.place("c", GIB, &idle) {
            Placement::Load { evict, .. } => assert_eq!(evict, vec![a]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_prefetch_takes_free_budget_only() {
        let mut r = Residency::new(3 * GIB, 3);
        let a = load(&mut r, "a", GIB);
        assert_eq!(r.place_free("a", GIB), Prefetch::Resident);
        let b = match r.place_free("b", GIB) {
            Prefetch::Load(id) => id,
            other => panic!("{other:?}"),
        };
        assert_ne!(a, b);
        r.loaded("b", b, GIB, KeepAlive::Forever, Instant::now());
        // One GiB left: two do not fit, and nothing is unloaded for them.
        assert_eq!(r.place_free("c", 2 * GIB), Prefetch::NoRoom { free: GIB });
        assert_eq!((r.len(), r.used()), (2, 2 * GIB));
        // Asking about `a` left it the least recently used.
        match r.place("d", 2 * GIB, &idle) {
            Placement::Load { evict, .. } => assert_eq!(evict, vec![a]),
            other => panic!("{other:?}"),
        }
        // The device's model count counts too.
        let mut full = Residency::new(100 * GIB, 1);
        load(&mut full, "a", GIB);
        assert_eq!(
            full.place_free("b", GIB),
            Prefetch::NoRoom { free: 99 * GIB }
        );
    }

    #[test]
    fn a_reloaded_model_gets_a_new_guest_id() {
        let mut r = Residency::new(GIB, 4);
        let a = load(&mut r, "a", GIB);
        load(&mut r, "b", GIB);
        let a2 = load(&mut r, "a", GIB);
        assert_ne!(a, a2);
        assert_eq!(r.name_of(a2), Some("a"));
        assert_eq!(r.name_of(a), None);
    }

    #[test]
    fn idle_models_expire_after_their_last_requests_keep_alive() {
        let secs = |s| KeepAlive::For(Duration::from_secs(s));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = Residency::new(4 * GIB, 4);
        let a = match r.place("a", GIB, &idle) {
            Placement::Load { guest_id, .. } => guest_id,
            other => panic!("{other:?}"),
        };
        r.loaded("a", a, GIB, secs(300), t0);
        let b = match r.place("b", GIB, &idle) {
            Placement::Load { guest_id, .. } => guest_id,
            other => panic!("{other:?}"),
        };
        r.loaded("b", b, GIB, secs(300), t0);
        assert!(r.expired(at(299), &idle).is_empty());
        // A request on `a` ends at 100 s asking for 0: it expires at once, `b` keeps its
        // five minutes from its load.
        r.released(a, secs(0), at(100));
        let gone: Vec<u32> = r
            .expired(at(100), &idle)
            .iter()
            .map(|e| e.guest_id)
            .collect();
        assert_eq!(gone, vec![a]);
        let both = r.expired(at(300), &idle);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].idle, Duration::from_secs(200));
        assert_eq!(both[0].keep_alive, secs(0));
        // The last request's keep-alive wins, and a model in use never expires.
        r.released(b, KeepAlive::Forever, at(10));
        r.released(a, secs(60), at(200));
        assert!(r.expired(at(259), &idle).is_empty());
        let busy_a = move |id: u32| id == a;
        assert!(r.expired(at(1 << 20), &busy_a).is_empty());
        assert_eq!(r.expired(at(260), &idle)[0].name, "a");
        // Releasing a model that is gone (its guest restarted) changes nothing.
        r.unloaded(a);
        r.released(a, secs(0), at(300));
        assert!(r.expired(at(1 << 20), &idle).is_empty());
    }

    #[test]
    fn the_view_puts_expiry_on_the_wall_clock() {
        let mut r = Residency::new(1 << 30, 4);
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        r.loaded("a", 1, 10, KeepAlive::For(Duration::from_secs(60)), t0);
        r.loaded("b", 2, 20, KeepAlive::Forever, t0);
        let later = t0 + Duration::from_secs(100);
        let v = r.view(later, wall);
        assert_eq!(v[0].name, "a");
        assert_eq!(v[0].expires, Some(wall - Duration::from_secs(40)));
        assert_eq!((v[1].bytes, v[1].expires), (20, None));
        let v = r.view(t0, wall);
        assert_eq!(v[0].expires, Some(wall + Duration::from_secs(60)));
    }
}
