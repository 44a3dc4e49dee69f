//! The timer page: a monotonic clock, and the wait registers that park a vCPU thread in the
//! VMM (no host CPU) until it is woken or its timeout passes.
//!
//! A wake-up is never lost: each vCPU's register remembers the wake-ups it has seen, so a
//! wait that starts after a wake-up the vCPU has not seen returns at once. A guest can thus
//! check its queues, find them empty and wait without a race against the device.

use super::{DeviceEvent, MmioDevice};
use guest_kernel::abi::{MAX_VCPUS, TIMER_NOW, TIMER_WAIT, TIMER_WAKE};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest single wait, so a guest cannot park a vCPU thread for ever.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Clock and wait register.
pub struct Timer {
    start: Instant,
    wakeups: Mutex<Wakeups>,
    wake: Condvar,
}

/// Wake-ups so far, how many of them each vCPU's wait register has seen, and how many
/// vCPUs are parked in their wait register now.
#[derive(Default)]
struct Wakeups {
    count: u64,
    seen: [u64; MAX_VCPUS],
    parked: usize,
}

impl Default for Timer {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            wakeups: Mutex::new(Wakeups::default()),
            wake: Condvar::new(),
        }
    }
}

impl Timer {
    /// Wakes every waiting vCPU (a request arrived, the VM is stopping, ...).
    pub fn wake_all(&self) {
        self.wakeups.lock().unwrap_or_else(|e| e.into_inner()).count += 1;
        self.wake.notify_all();
    }

    /// Parks vCPU `vcpu` until a wake-up it has not seen yet, or `timeout`.
    fn wait(&self, vcpu: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let mut wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        wakeups.parked += 1;
        while wakeups.count == wakeups.seen[vcpu] {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            wakeups = self
                .wake
                .wait_timeout(wakeups, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        wakeups.parked -= 1;
        wakeups.seen[vcpu] = wakeups.count;
    }

    /// Runs `f` while `vcpus` vCPUs are parked in their wait registers and cannot leave
    /// them (a waiting vCPU needs the lock `f` runs under to return); `None`, without
    /// running `f`, when fewer are parked now. Tests rewrite guest code with it, which is
    /// only safe while no vCPU executes that code.
    #[cfg(feature = "test-hooks")]
    pub fn while_parked<R>(&self, vcpus: usize, f: impl FnOnce() -> R) -> Option<R> {
        let wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        let result = (wakeups.parked >= vcpus).then(f);
        drop(wakeups);
        result
    }
}

impl MmioDevice for Timer {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let value = if offset == TIMER_NOW {
            self.start.elapsed().as_nanos() as u64
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if offset == TIMER_WAKE {
            self.wake_all();
            return None;
        }
        let vcpu = offset.wrapping_sub(TIMER_WAIT) / 8;
        if offset >= TIMER_WAIT && offset.is_multiple_of(8) && vcpu < MAX_VCPUS as u64 {
            let mut v = [0u8; 8];
            let n = data.len().min(8);
            v[..n].copy_from_slice(&data[..n]);
            self.wait(vcpu as usize, Duration::from_nanos(u64::from_le_bytes(v)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn clock_advances_and_waits_time_out_or_wake() {
        let t = Arc::new(Timer::default());
        let mut a = [0u8; 8];
        t.read(TIMER_NOW, &mut a);
        let start = Instant::now();
        t.write(TIMER_WAIT, &20_000_000u64.to_le_bytes());
        assert!(start.elapsed() >= Duration::from_millis(20));
        let mut b = [0u8; 8];
        t.read(TIMER_NOW, &mut b);
        assert!(u64::from_le_bytes(b) > u64::from_le_bytes(a));

        let waker = Arc::clone(&t);
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake_all();
        });
        let start = Instant::now();
        t.write(TIMER_WAIT, &10_000_000_000u64.to_le_bytes());
        assert!(start.elapsed() < Duration::from_secs(5), "woken early");
        h.join().unwrap();
    }

    #[test]
    fn a_wakeup_before_the_wait_is_not_lost_and_is_per_vcpu() {
        let t = Timer::default();
        t.wake_all();
        let start = Instant::now();
        // Both vCPUs have a wake-up they have not seen: each returns at once, once.
        t.write(TIMER_WAIT, &10_000_000_000u64.to_le_bytes());
        t.write(TIMER_WAIT + 8, &10_000_000_000u64.to_le_bytes());
        assert!(start.elapsed() < Duration::from_secs(5));
        let start = Instant::now();
        t.write(TIMER_WAIT + 8, &20_000_000u64.to_le_bytes());
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "the wake-up counted twice"
        );
    }

    #[cfg(feature = "test-hooks")]
    #[test]
    fn while_parked_runs_only_while_every_vcpu_waits_and_holds_them_there() {
        let t = Arc::new(Timer::default());
        assert_eq!(t.while_parked(1, || ()), None, "no vCPU waits yet");
        let waiter = Arc::clone(&t);
        let h = std::thread::spawn(move || {
            waiter.write(TIMER_WAIT, &30_000_000u64.to_le_bytes());
            Instant::now()
        });
        let ran = loop {
            if let Some(at) = t.while_parked(1, || {
                // The wait times out meanwhile, but cannot return while this holds it.
                std::thread::sleep(Duration::from_millis(60));
                Instant::now()
            }) {
                break at;
            }
            std::thread::yield_now();
        };
        assert!(h.join().unwrap() >= ran, "the vCPU left its wait during f");
        assert_eq!(t.while_parked(1, || ()), None, "the vCPU left its wait");
    }
}
