//! The user-mode side of the guest ABI: the `ud2` syscall gate and a panic handler, for the
//! small test programs in `src/bin/`.
#![no_std]

#[cfg(test)]
extern crate std;

use guest_kernel::abi::syscall;

#[cfg(all(target_arch = "x86_64", feature = "guest"))]
mod mem;

pub mod extents;
pub mod private_pool;

/// The protocol the `scrub` program and the host's reclaim test share.
pub mod scrub {
    /// Bytes of the private region the program fills, the host releases and the program
    /// reads back.
    pub const SCRUB_BYTES: u64 = 8 << 20;
    /// Where in the shared window the u64 mailbox is.
    pub const MAILBOX_OFFSET: u64 = 30 << 20;
    /// Mailbox states, in order.
    pub mod state {
        pub const FILLED: u64 = 1;
        pub const RELEASED: u64 = 2;
        pub const ALL_ZERO: u64 = 3;
        pub const NOT_ZERO: u64 = 4;
    }
}

/// What the `hog` program and the host's forced-reclaim test share.
pub mod hog {
    /// Bytes of the private region the program touches and then holds against any budget.
    pub const HOG_BYTES: u64 = 32 << 20;
}

/// The layout the `canary` program and the host test share.
pub mod canary {
    /// Bytes of each canary.
    pub const CANARY_BYTES: usize = 64;
    /// Where in the shared window canary B goes (past the virtio-llm rings and buffers).
    pub const SHARED_OFFSET: u64 = 30 << 20;
    /// Where in the shared window the two FNV-1a hashes go (A's, then B's).
    pub const HASHES_OFFSET: u64 = SHARED_OFFSET + 4096;

    /// 64-bit FNV-1a: the host looks for blocks by hash so it never holds canary A itself.
    pub fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}
pub mod heap_alloc;

/// Every guest program's heap (the driver and the engine allocate).
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
#[global_allocator]
static HEAP: heap_alloc::GuestAlloc = heap_alloc::GuestAlloc::new();

/// What the private pool holds (all zero when the VM has no private region).
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
pub fn private_usage() -> private_pool::PoolUsage {
    HEAP.private_usage()
}

/// Runs `f` on the private pool: budget changes, trims and releases.
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
pub fn with_private_pool<R>(f: impl FnOnce(&mut private_pool::PrivatePool) -> R) -> R {
    HEAP.with_private(f)
}
#[cfg(target_arch = "x86_64")]
pub mod virtio;

/// Calls the guest kernel: `ud2` with the number in `rax` and arguments in `rdi`, `rsi`.
#[cfg(target_arch = "x86_64")]
pub fn syscall2(number: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` traps into the guest kernel, which handles the call and resumes after
    // the instruction; only rax is changed.
    unsafe {
        core::arch::asm!("ud2", inlateout("rax") number => ret, in("rdi") a, in("rsi") b, options(nostack))
    };
    ret
}

/// Logs `s` on the VM console.
#[cfg(target_arch = "x86_64")]
pub fn print(s: &str) {
    syscall2(syscall::WRITE, s.as_ptr() as u64, s.len() as u64);
}

/// Logs `label` followed by `value` in hex and a newline.
#[cfg(target_arch = "x86_64")]
pub fn print_hex(label: &str, value: u64) {
    let mut buf = [0u8; 19];
    buf[0] = b'0';
    buf[1] = b'x';
    for i in 0..16 {
        let nibble = (value >> (60 - 4 * i)) & 0xf;
        buf[2 + i] = b"0123456789abcdef"[nibble as usize];
    }
    buf[18] = b'\n';
    print(label);
    // The buffer holds ASCII only.
    print(core::str::from_utf8(&buf).unwrap_or("?\n"));
}

/// Ends the VM with `code`.
#[cfg(target_arch = "x86_64")]
pub fn exit(code: u32) -> ! {
    syscall2(syscall::EXIT, u64::from(code), 0);
    // The VMM stops the VM on exit; nothing runs after it.
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Panics in a guest program end the VM with exit code 101.
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    // Formatted into a fixed buffer: the heap may be what failed.
    let mut line = LineBuffer::default();
    let _ = write!(line, "guest program panicked: {}", info.message());
    if let Some(at) = info.location() {
        let _ = write!(line, " at {}:{}", at.file(), at.line());
    }
    print(line.as_str());
    print("\n");
    exit(101)
}

/// A line of up to 256 bytes; what does not fit is cut (at a character boundary).
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

#[cfg(all(target_arch = "x86_64", feature = "guest"))]
impl Default for LineBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }
}

#[cfg(all(target_arch = "x86_64", feature = "guest"))]
impl LineBuffer {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("guest program panicked")
    }
}

#[cfg(all(target_arch = "x86_64", feature = "guest"))]
impl core::fmt::Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

// The precompiled `alloc` of the x86_64-unknown-linux-gnu target was built with unwinding,
// so formatting code references the unwinder even though guest programs abort on panic
// (`panic = "abort"`): these are never called, they only satisfy the linker.
/// Never called: panics abort in guest programs.
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Never called: panics abort in guest programs.
#[cfg(all(target_arch = "x86_64", feature = "guest"))]
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    exit(102)
}

/// The AVX2 + FMA computation shared by the `avxdot` program and the host test.
#[cfg(target_arch = "x86_64")]
pub mod avx {
    use core::arch::x86_64::*;

    /// Deterministic inputs (exact in f32).
    pub fn inputs() -> ([f32; 1024], [f32; 1024]) {
        let mut x = [0.0f32; 1024];
        let mut y = [0.0f32; 1024];
        for i in 0..1024 {
            x[i] = (i % 17) as f32 * 0.125 - 1.0;
            y[i] = (i % 13) as f32 * 0.25 + 0.5;
        }
        (x, y)
    }

    /// The f32 bits of Σ x·y computed with 8-lane FMAs and a fixed reduction order.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bits() -> u32 {
        let (x, y) = inputs();
        let mut acc = _mm256_setzero_ps();
        for (xs, ys) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
            // SAFETY: each chunk is exactly 8 f32s; loadu has no alignment requirement.
            let (a, b) = unsafe { (_mm256_loadu_ps(xs.as_ptr()), _mm256_loadu_ps(ys.as_ptr())) };
            acc = _mm256_fmadd_ps(a, b, acc);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 writable f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().fold(0.0f32, |s, &v| s + v).to_bits()
    }
}

/// The fixed integer kernel `make bench-boot` times in guest user mode and on the host.
pub fn compute_kernel(iterations: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..iterations {
        h = (h ^ i).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
    }
    h
}
