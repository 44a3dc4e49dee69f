//! Fair queueing of generation jobs: one FIFO per client, served round-robin, with a bound
//! on all waiting jobs together. The guest runs one generation at a time, so fairness is
//! decided here: a client with 20 queued requests does not delay another client's single
//! request by more than one generation. And no client may hold more than its share of the
//! queue's places, so one client cannot fill the queue and lock the others out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Who sent a request, as far as the daemon can tell: what its share of the queue is
/// counted by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The client an API key was given to (its name in the config).
    Key(String),
    /// A Unix-socket client, by user id.
    Uid(u32),
    /// Any TCP client when no keys are configured (loopback only): one share for all.
    Anonymous,
}

/// Who a job belongs to: its principal, and within it the `user` field of the request when
/// given, else the connection. Turns are taken by key; the share is per principal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub who: Principal,
    pub lane: Lane,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    User(String),
    Connection(u64),
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    Full,
    /// The client has its share of the queue waiting already.
    ClientShare,
    ShuttingDown,
}

/// Round-robin over clients, FIFO within a client.
pub struct FairQueue<T> {
    per_client: HashMap<ClientKey, VecDeque<T>>,
    /// Jobs waiting per principal (absent: none).
    per_principal: HashMap<Principal, usize>,
    /// Clients with queued jobs, in the order they will be served.
    order: VecDeque<ClientKey>,
    len: usize,
    capacity: usize,
    /// The most jobs one principal may have waiting.
    share: usize,
}

impl<T> FairQueue<T> {
    pub fn new(capacity: usize, share: usize) -> Self {
        Self {
            per_client: HashMap::new(),
            per_principal: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            capacity,
            share,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job`; gives it back when the queue is full or its client has its share.
    pub fn push(&mut self, client: ClientKey, job: T) -> Result<(), (Rejected, T)> {
        if self.len >= self.capacity {
            return Err((Rejected::Full, job));
        }
        let waiting = self.per_principal.entry(client.who.clone()).or_default();
        if *waiting >= self.share {
            return Err((Rejected::ClientShare, job));
        }
        *waiting += 1;
        let q = self.per_client.entry(client.clone()).or_default();
        if q.is_empty() {
            self.order.push_back(client);
        }
        q.push_back(job);
        self.len += 1;
        Ok(())
    }

    /// The next client's oldest job; that client then goes to the back of the line.
    pub fn pop(&mut self) -> Option<T> {
        let client = self.order.pop_front()?;
        let q = self.per_client.get_mut(&client)?;
        let job = q.pop_front();
        if job.is_some() {
            self.len -= 1;
            if let Some(n) = self.per_principal.get_mut(&client.who) {
                *n -= 1;
                if *n == 0 {
                    self.per_principal.remove(&client.who);
                }
            }
        }
        if q.is_empty() {
            self.per_client.remove(&client);
        } else {
            self.order.push_back(client);
        }
        job
    }
}

/// The queue between the HTTP handlers and the guest worker thread.
pub struct JobQueue<T> {
    inner: Mutex<(FairQueue<T>, bool)>,
    ready: Condvar,
}

impl<T> JobQueue<T> {
    /// A queue of `capacity` jobs, at most `share` of them from one principal.
    pub fn new(capacity: usize, share: usize) -> Self {
        Self {
            inner: Mutex::new((FairQueue::new(capacity, share), false)),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (FairQueue<T>, bool)> {
        // A panic while holding the lock leaves the queue consistent (every method finishes
        // its bookkeeping before it can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn submit(&self, client: ClientKey, job: T) -> Result<(), (Rejected, T)> {
        let mut g = self.lock();
        if g.1 {
            return Err((Rejected::ShuttingDown, job));
        }
        g.0.push(client, job)?;
        self.ready.notify_one();
        Ok(())
    }

    /// Waits up to `timeout` for a job. `Err(())` once the queue is closed and empty.
    #[allow(clippy::result_unit_err)]
    pub fn next(&self, timeout: Duration) -> Result<Option<T>, ()> {
        let mut g = self.lock();
        if g.0.is_empty() && !g.1 {
            g = self
                .ready
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        match g.0.pop() {
            Some(j) => Ok(Some(j)),
            None if g.1 => Err(()),
            None => Ok(None),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No new jobs; the worker finishes the queued ones and stops.
    pub fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u64) -> ClientKey {
        ClientKey {
            who: Principal::Anonymous,
            lane: Lane::Connection(n),
        }
    }

    fn key(name: &str) -> ClientKey {
        ClientKey {
            who: Principal::Key(name.into()),
            lane: Lane::Connection(0),
        }
    }

    #[test]
    fn clients_take_turns() {
        let mut q = FairQueue::new(10, 10);
        for j in 0..3 {
            q.push(c(1), (1, j)).unwrap();
        }
        q.push(c(2), (2, 0)).unwrap();
        let user = ClientKey {
            who: Principal::Uid(7),
            lane: Lane::User("u".into()),
        };
        q.push(user, (3, 0)).unwrap();
        q.push(c(2), (2, 1)).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (1, 2)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_gives_the_job_back() {
        let mut q = FairQueue::new(2, 2);
        q.push(c(1), 1).unwrap();
        q.push(c(2), 2).unwrap();
        assert_eq!(q.push(c(3), 3), Err((Rejected::Full, 3)));
        assert_eq!(q.pop(), Some(1));
        q.push(c(3), 3).unwrap();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn one_principal_cannot_fill_the_queue() {
        let mut q = FairQueue::new(4, 2);
        q.push(key("a"), 1).unwrap();
        // Another lane of the same principal counts against the same share.
        let a_user = ClientKey {
            lane: Lane::User("u".into()),
            ..key("a")
        };
        q.push(a_user, 2).unwrap();
        assert_eq!(q.push(key("a"), 3), Err((Rejected::ClientShare, 3)));
        q.push(key("b"), 4).unwrap();
        assert_eq!(q.pop(), Some(1));
        // A served job gives its place back.
        q.push(key("a"), 5).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn a_closed_queue_drains_then_ends() {
        let q = JobQueue::new(4, 4);
        q.submit(c(1), 1).unwrap();
        q.close();
        assert_eq!(q.submit(c(1), 2), Err((Rejected::ShuttingDown, 2)));
        assert_eq!(q.next(Duration::ZERO), Ok(Some(1)));
        assert_eq!(q.next(Duration::ZERO), Err(()));
    }

    #[test]
    fn the_worker_wakes_for_a_job() {
        let q = std::sync::Arc::new(JobQueue::new(4, 4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.next(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        q.submit(c(1), 7).unwrap();
        assert_eq!(t.join().unwrap(), Ok(Some(7)));
    }
}
