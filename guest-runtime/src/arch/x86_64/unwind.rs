//! The precompiled `alloc` of the x86_64-unknown-linux-gnu target was built with unwinding,
//! so formatting code references the unwinder even though guest programs abort on panic
//! (`panic = "abort"`): these are never called, they only satisfy the linker.

/// Never called: panics abort in guest programs.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Never called: panics abort in guest programs.
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::exit(102)
}
