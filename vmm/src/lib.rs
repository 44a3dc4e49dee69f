//! The FlexServe VMM: hypervisor backends, the machine (memory, devices, vCPU threads), the
//! memory broker, and [`guest_vm::GuestVm`], a booted guest with the engine driven over
//! virtio-llm. A library with no async runtime and no HTTP: the `flexserve` crate builds the
//! CLI, the daemon and the benchmarks on it.

pub mod arch;
pub mod devices;
pub mod elf_loader;
pub mod guest_images;
pub mod guest_kernels;
pub mod guest_vm;
pub mod hypervisor;
pub mod key_root;
pub mod machine;
pub mod memory_broker;
#[cfg(feature = "test-hooks")]
pub mod parked_writer;
mod thread_cpu;
pub mod vcpu_exit;
