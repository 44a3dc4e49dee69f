//! The tiny guest OS: boot, page tables, exception vectors, user-mode entry, a few syscalls.
//!
//! Not built yet (issue 3). Empty on purpose so that nothing pretends to work.
#![no_std]
