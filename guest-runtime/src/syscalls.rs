//! The guest kernel's services as user programs call them (through [`crate::syscall2`]).
#![forbid(unsafe_code)]

use crate::syscall2;
use guest_abi::syscall;

/// Logs `s` on the VM console.
pub fn print(s: &str) {
    syscall2(syscall::WRITE, s.as_ptr() as u64, s.len() as u64);
}

/// Logs `label` followed by `value` in hex and a newline.
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
pub fn exit(code: u32) -> ! {
    syscall2(syscall::EXIT, u64::from(code), 0);
    // The VMM stops the VM on exit; nothing runs after it.
    #[allow(clippy::empty_loop)]
    loop {}
}
