//! The state an x86_64 vCPU starts in: 64-bit long mode, paging on, directly in the entry
//! point the VMM chose (Firecracker-style; no real-mode boot code runs in the guest, which
//! matters here because guest ring-0 instructions are emulated at ~1M/s).
//!
//! The VMM writes a GDT, a TSS and identity-mapped page tables (2 MiB pages, user
//! accessible, covering the first 4 GiB so the MMIO window is mapped, plus the private
//! region above 4 GiB) into guest memory.

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of vCPU 0's 64-bit TSS (104 bytes); vCPU `i`'s is `TSS_STRIDE`
/// bytes further.
pub const TSS_ADDR: u64 = 0x1800;
pub const TSS_STRIDE: u64 = 0x80;
/// vCPUs the boot tables have a TSS for.
pub const MAX_VCPUS: usize = 8;
/// Guest-physical address of the PML4; the PDPT and one page directory per mapped GiB follow.
pub const PML4_ADDR: u64 = 0x2000;
/// GiB of guest-physical space the tables can map: the first 4 and up to 60 of private
/// region above them.
pub const MAX_MAPPED_GIB: u64 = 64;
/// Bytes the boot structures occupy from address 0 (below the kernel at 1 MiB).
pub const BOOT_TABLES_END: u64 = PML4_ADDR + (2 + MAX_MAPPED_GIB) * 0x1000;
/// The size of the GDT in bytes minus one (the `limit` of GDTR).
pub const GDT_LIMIT: u16 = (8 * (5 + 2 * MAX_VCPUS) - 1) as u16;

/// Selectors of the GDT below.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
/// vCPU `i`'s TSS selector is `TSS_SEL + 16 * i`.
pub const TSS_SEL: u16 = 0x28;

/// Guest-physical address of vCPU `id`'s TSS.
pub fn tss_addr(id: u8) -> u64 {
    TSS_ADDR + TSS_STRIDE * u64::from(id)
}

/// Null, kernel code/data, user data/code (DPL 3), then one TSS descriptor (two slots)
/// per vCPU.
fn gdt() -> [u64; 5 + 2 * MAX_VCPUS] {
    let mut g = [0u64; 5 + 2 * MAX_VCPUS];
    g[1] = 0x00af_9b00_0000_ffff; // kernel code: 64-bit, DPL 0
    g[2] = 0x00cf_9300_0000_ffff; // kernel data
    g[3] = 0x00cf_f300_0000_ffff; // user data: DPL 3
    g[4] = 0x00af_fb00_0000_ffff; // user code: 64-bit, DPL 3
    for id in 0..MAX_VCPUS {
        let base = tss_addr(id as u8);
        g[5 + 2 * id] =
            0x0000_8900_0000_0067u64 | ((base & 0xff_ffff) << 16) | (((base >> 24) & 0xff) << 56);
        g[6 + 2 * id] = base >> 32;
    }
    g
}

/// Writes the GDT and page tables into `mem` (guest-physical address 0 at index 0),
/// identity-mapping the first `mapped_gib` GiB (at least 4, at most `MAX_MAPPED_GIB`).
pub fn write_boot_tables(mem: &mut [u8], mapped_gib: u64) {
    let mut put = |at: u64, v: u64| {
        let at = at as usize;
        mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    };
    for (i, d) in gdt().iter().enumerate() {
        put(GDT_ADDR + 8 * i as u64, *d);
    }
    const PRESENT_RW_USER: u64 = 0b111;
    const HUGE: u64 = 1 << 7;
    let pdpt = PML4_ADDR + 0x1000;
    put(PML4_ADDR, pdpt | PRESENT_RW_USER);
    for gib in 0..mapped_gib.clamp(4, MAX_MAPPED_GIB) {
        let pd = pdpt + 0x1000 * (1 + gib);
        put(pdpt + 8 * gib, pd | PRESENT_RW_USER);
        for i in 0..512u64 {
            put(pd + 8 * i, ((gib * 512 + i) << 21) | PRESENT_RW_USER | HUGE);
        }
    }
}

/// Control registers for long mode with SSE enabled (OSXSAVE when the CPU has XSAVE).
pub const CR0: u64 = 0x8005_0033; // PG | WP | NE | ET | MP | PE
pub const CR4_BASE: u64 = 0x20 | 0x200 | 0x400; // PAE | OSFXSR | OSXMMEXCPT
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const EFER: u64 = 0x500; // LME | LMA

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_identity_map_the_first_4_gib() {
        let mut mem = vec![0u8; BOOT_TABLES_END as usize];
        write_boot_tables(&mut mem, 6);
        let read =
            |at: u64| u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap());
        // Walk the tables for the MMIO window address.
        let va = 0xd000_0000u64;
        let pdpte = read((read(PML4_ADDR) & !0xfff) + 8 * ((va >> 30) & 511));
        let pde = read((pdpte & !0xfff) + 8 * ((va >> 21) & 511));
        assert_eq!(pde & !0xfff, va & !0x1f_ffff);
        assert_eq!(pde & 0x87, 0x87);
        // The private region above 4 GiB is mapped up to the requested 6 GiB, no further.
        let va = (6u64 << 30) - (2 << 20);
        let pdpte = read((read(PML4_ADDR) & !0xfff) + 8 * ((va >> 30) & 511));
        let pde = read((pdpte & !0xfff) + 8 * ((va >> 21) & 511));
        assert_eq!(pde & !0xfff, va);
        assert_eq!(read((read(PML4_ADDR) & !0xfff) + 8 * 6), 0);
        assert_eq!(
            read(GDT_ADDR + 8 * u64::from(USER_CS >> 3)) >> 45 & 3,
            3,
            "user code DPL"
        );
    }
}
