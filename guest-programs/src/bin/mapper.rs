//! Exercises map/unmap: maps 3 MiB, fills it, unmaps it, maps again (the same chunks come
//! back), then maps until the heap is full; prints what it saw.
#![no_std]
#![no_main]

use guest_runtime::abi::syscall;
use guest_runtime::{exit, print_hex, syscall2};

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let len = 3 << 20;
    let a = syscall2(syscall::MAP, len, 0);
    print_hex("map ", a);
    let region = a as *mut u64;
    for i in 0..(len / 8) as usize {
        // SAFETY: [a, a + len) was just mapped for this program.
        unsafe { region.add(i).write_volatile(i as u64) };
    }
    // SAFETY: as above; the last word was written by the loop.
    let last = unsafe { region.add((len / 8) as usize - 1).read_volatile() };
    print_hex("last ", last);
    print_hex("unmap ", syscall2(syscall::UNMAP, a, len));
    print_hex("unmap again ", syscall2(syscall::UNMAP, a, len));
    print_hex("remap ", syscall2(syscall::MAP, len, 0));
    let mut chunks = 2; // the remap holds two 2 MiB chunks
    while syscall2(syscall::MAP, 1, 0) != u64::MAX {
        chunks += 1;
    }
    print_hex("chunks ", chunks);
    exit(0)
}
