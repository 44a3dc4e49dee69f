//! Fair queueing of generation jobs: one FIFO per client, served round-robin, with a bound
//! on all waiting jobs together. The guest runs one generation at a time, so fairness is
//! decided here: a client with 20 queued requests does not delay another client's single
//! request by more than one generation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Who a job belongs to: the `user` field of the request when given, else the connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(String),
    Connection(u64),
}

/// Round-robin over clients, FIFO within a client.
pub struct FairQueue<T> {
    per_client: HashMap<ClientKey, VecDeque<T>>,
    /// Clients with queued jobs, in the order they will be served.
    order: VecDeque<ClientKey>,
    len: usize,
    capacity: usize,
}

impl<T> FairQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            per_client: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `job`; gives it back when the queue is full.
    pub fn push(&mut self, client: ClientKey, job: T) -> Result<(), T> {
        if self.len >= self.capacity {
            return Err(job);
        }
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
        if q.is_empty() {
            self.per_client.remove(&client);
        } else {
            self.order.push_back(client);
        }
        if job.is_some() {
            self.len -= 1;
        }
        job
    }
}

/// The queue between the HTTP handlers and the guest worker thread.
pub struct JobQueue<T> {
    inner: Mutex<(FairQueue<T>, bool)>,
    ready: Condvar,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    Full,
    ShuttingDown,
}

impl<T> JobQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((FairQueue::new(capacity), false)),
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
        g.0.push(client, job).map_err(|j| (Rejected::Full, j))?;
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
        ClientKey::Connection(n)
    }

    #[test]
    fn clients_take_turns() {
        let mut q = FairQueue::new(10);
        for j in 0..3 {
            q.push(c(1), (1, j)).unwrap();
        }
        q.push(c(2), (2, 0)).unwrap();
        q.push(ClientKey::User("u".into()), (3, 0)).unwrap();
        q.push(c(2), (2, 1)).unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (1, 2)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_gives_the_job_back() {
        let mut q = FairQueue::new(2);
        q.push(c(1), 1).unwrap();
        q.push(c(2), 2).unwrap();
        assert_eq!(q.push(c(3), 3), Err(3));
        assert_eq!(q.pop(), Some(1));
        q.push(c(3), 3).unwrap();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_closed_queue_drains_then_ends() {
        let q = JobQueue::new(4);
        q.submit(c(1), 1).unwrap();
        q.close();
        assert_eq!(q.submit(c(1), 2), Err((Rejected::ShuttingDown, 2)));
        assert_eq!(q.next(Duration::ZERO), Ok(Some(1)));
        assert_eq!(q.next(Duration::ZERO), Err(()));
    }

    #[test]
    fn the_worker_wakes_for_a_job() {
        let q = std::sync::Arc::new(JobQueue::new(4));
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.next(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        q.submit(c(1), 7).unwrap();
        assert_eq!(t.join().unwrap(), Ok(Some(7)));
    }
}
