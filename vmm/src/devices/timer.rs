//! The timer page: a monotonic clock, and the wait register that parks a vCPU thread in the
//! VMM (no host CPU) until it is woken or its timeout passes.

use super::{DeviceEvent, MmioDevice};
use guest_kernel::abi::{TIMER_NOW, TIMER_WAIT};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest single wait, so a guest cannot park a vCPU thread for ever.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Clock and wait register.
pub struct Timer {
    start: Instant,
    wakeups: Mutex<u64>,
    wake: Condvar,
}

impl Default for Timer {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            wakeups: Mutex::new(0),
            wake: Condvar::new(),
        }
    }
}

impl Timer {
    /// Wakes every waiting vCPU (a request arrived, the VM is stopping, ...).
    pub fn wake_all(&self) {
        *self.wakeups.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.wake.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let mut wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        let seen = *wakeups;
        while *wakeups == seen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            wakeups = self
                .wake
                .wait_timeout(wakeups, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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
        if offset == TIMER_WAIT {
            let mut v = [0u8; 8];
            let n = data.len().min(8);
            v[..n].copy_from_slice(&data[..n]);
            self.wait(Duration::from_nanos(u64::from_le_bytes(v)));
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
}
