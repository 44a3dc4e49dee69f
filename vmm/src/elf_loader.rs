//! Loads static ELF64 executables (the guest kernel and the engine's user-mode program) into
//! guest memory. Images come from our own build, but the loader still checks every offset,
//! size and overlap, so a damaged image is a clear error and never a write outside the
//! target region.

/// Why an image cannot be loaded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("image is truncated: {what} needs bytes {start}..{end}, the file has {len}")]
    Truncated {
        what: &'static str,
        start: u64,
        end: u64,
        len: usize,
    },
    #[error("not an ELF file (bad magic); build the guest image with `make image`")]
    BadMagic,
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    #[error("segment {index}: file size {filesz:#x} exceeds its memory size {memsz:#x}")]
    FileLargerThanMemory {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index} ({addr:#x}+{size:#x}) lies outside guest memory {base:#x}..{end:#x}")]
    OutsideMemory {
        index: usize,
        addr: u64,
        size: u64,
        base: u64,
        end: u64,
    },
    #[error("segments {a} and {b} overlap")]
    Overlap { a: usize, b: usize },
    #[error("entry point {0:#x} is not inside a loaded executable segment")]
    BadEntry(u64),
    #[error("the image has no loadable segment")]
    NoSegments,
}

/// The CPU an image must be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
}

impl Machine {
    fn e_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }
}

/// One `PT_LOAD` segment: `file_range` of the image goes to `addr`, then zeros up to
/// `mem_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub mem_size: u64,
    pub file_offset: usize,
    pub file_size: usize,
    pub executable: bool,
}

/// A checked image: where to jump and what to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
/// More program headers than any image of ours has; stops absurd counts early.
const MAX_PHDRS: usize = 64;

fn field<const N: usize>(b: &[u8], at: usize, what: &'static str) -> Result<[u8; N], ElfError> {
    b.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated {
            what,
            start: at as u64,
            end: (at + N) as u64,
            len: b.len(),
        })
}

fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, ElfError> {
    field::<2>(b, at, what).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, ElfError> {
    field::<4>(b, at, what).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize, what: &'static str) -> Result<u64, ElfError> {
    field::<8>(b, at, what).map(u64::from_le_bytes)
}

/// What the ELF header says about the program header table and the entry point.
struct Header {
    entry: u64,
    phoff: u64,
    phentsize: usize,
    phnum: usize,
}

/// Checks the ELF header: a static little-endian 64-bit executable for `machine`.
fn header(image: &[u8], machine: Machine) -> Result<Header, ElfError> {
    if image.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(if image.len() < 4 {
            ElfError::Truncated {
                what: "ELF header",
                start: 0,
                end: 64,
                len: image.len(),
            }
        } else {
            ElfError::BadMagic
        });
    }
    let ident = field::<16>(image, 0, "ELF header")?;
    if ident[4] != 2 {
        return Err(ElfError::Unsupported("not a 64-bit ELF"));
    }
    if ident[5] != 1 {
        return Err(ElfError::Unsupported("not little-endian"));
    }
    if u16_at(image, 16, "ELF header")? != 2 {
        return Err(ElfError::Unsupported(
            "not an executable (ET_EXEC); link it static",
        ));
    }
    if u16_at(image, 18, "ELF header")? != machine.e_machine() {
        return Err(ElfError::Unsupported("built for another CPU architecture"));
    }
    let entry = u64_at(image, 24, "ELF header")?;
    let phoff = u64_at(image, 32, "ELF header")?;
    let phentsize = usize::from(u16_at(image, 54, "ELF header")?);
    let phnum = usize::from(u16_at(image, 56, "ELF header")?);
    if phentsize < 56 || phnum > MAX_PHDRS {
        return Err(ElfError::Unsupported("program header table size"));
    }
    Ok(Header {
        entry,
        phoff,
        phentsize,
        phnum,
    })
}

/// Checks `image` and plans its load into guest-physical `[base, base + size)` (segments
/// are placed at their physical address, `p_paddr`).
pub fn plan(image: &[u8], machine: Machine, base: u64, size: u64) -> Result<LoadPlan, ElfError> {
    let Header {
        entry,
        phoff,
        phentsize,
        phnum,
    } = header(image, machine)?;
    let end = base
        .checked_add(size)
        .ok_or(ElfError::Unsupported("guest region wraps"))?;
    let mut segments = Vec::new();
    for index in 0..phnum {
        let at = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(index * phentsize))
            .ok_or(ElfError::Truncated {
                what: "program header",
                start: phoff,
                end: u64::MAX,
                len: image.len(),
            })?;
        if u32_at(image, at, "program header")? != PT_LOAD {
            continue;
        }
        let flags = u32_at(image, at + 4, "program header")?;
        let offset = u64_at(image, at + 8, "program header")?;
        let paddr = u64_at(image, at + 24, "program header")?;
        let filesz = u64_at(image, at + 32, "program header")?;
        let memsz = u64_at(image, at + 40, "program header")?;
        if filesz > memsz {
            return Err(ElfError::FileLargerThanMemory {
                index,
                filesz,
                memsz,
            });
        }
        let file_end = offset
            .checked_add(filesz)
            .filter(|&e| e <= image.len() as u64)
            .ok_or(ElfError::Truncated {
                what: "segment data",
                start: offset,
                end: offset.saturating_add(filesz),
                len: image.len(),
            })?;
        let mem_end = paddr.checked_add(memsz);
        if paddr < base || mem_end.is_none_or(|e| e > end) {
            return Err(ElfError::OutsideMemory {
                index,
                addr: paddr,
                size: memsz,
                base,
                end,
            });
        }
        segments.push(Segment {
            addr: paddr,
            mem_size: memsz,
            file_offset: offset as usize,
            file_size: (file_end - offset) as usize,
            executable: flags & PF_X != 0,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    for (a, sa) in segments.iter().enumerate() {
        for (b, sb) in segments.iter().enumerate().skip(a + 1) {
            if sa.addr < sb.addr + sb.mem_size && sb.addr < sa.addr + sa.mem_size {
                return Err(ElfError::Overlap { a, b });
            }
        }
    }
    if !segments
        .iter()
        .any(|s| s.executable && entry >= s.addr && entry < s.addr + s.mem_size)
    {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(LoadPlan { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 executable with the given (flags, paddr, file bytes, memsz) segments.
    fn elf(machine: u16, entry: u64, segs: &[(u32, u64, &[u8], u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_start = phoff as usize + 56 * segs.len();
        let mut b = vec![0u8; data_start];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&phoff.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, (flags, paddr, bytes, memsz)) in segs.iter().enumerate() {
            let at = 64 + 56 * i;
            let offset = b.len() as u64;
            b[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&paddr.to_le_bytes());
            b[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            b[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
            b.extend_from_slice(bytes);
        }
        b
    }

    const MEM: (u64, u64) = (0, 0x10_0000);

    fn good() -> Vec<u8> {
        elf(
            62,
            0x1000,
            &[
                (PF_X, 0x1000, &[0x90, 0xc3], 0x10),
                (0, 0x2000, b"data", 0x1000),
            ],
        )
    }

    #[test]
    fn a_valid_image_gives_its_plan() {
        let p = plan(&good(), Machine::X86_64, MEM.0, MEM.1).unwrap();
        assert_eq!(p.entry, 0x1000);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(
            (
                p.segments[1].addr,
                p.segments[1].file_size,
                p.segments[1].mem_size
            ),
            (0x2000, 4, 0x1000)
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let img = good();
        for cut in 0..img.len() {
            assert!(
                plan(&img[..cut], Machine::X86_64, MEM.0, MEM.1).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_images_get_their_specific_errors() {
        let mut bad_magic = good();
        bad_magic[1] = b'X';
        assert_eq!(
            plan(&bad_magic, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::BadMagic)
        );
        assert!(matches!(
            plan(&good(), Machine::Aarch64, MEM.0, MEM.1),
            Err(ElfError::Unsupported(_))
        ));
        let outside = elf(62, 0x1000, &[(PF_X, 0xff000, &[0; 8], 0x2000)]);
        assert!(matches!(
            plan(&outside, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::OutsideMemory { .. })
        ));
        let wrapping = elf(62, 0x1000, &[(PF_X, u64::MAX - 4, &[0; 8], 8)]);
        assert!(matches!(
            plan(&wrapping, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::OutsideMemory { .. })
        ));
        let overlap = elf(
            62,
            0x1000,
            &[(PF_X, 0x1000, &[0; 8], 0x100), (0, 0x10f0, &[0; 8], 0x10)],
        );
        assert_eq!(
            plan(&overlap, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::Overlap { a: 0, b: 1 })
        );
        let fat = elf(62, 0x1000, &[(PF_X, 0x1000, &[0; 16], 8)]);
        assert!(matches!(
            plan(&fat, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::FileLargerThanMemory { .. })
        ));
        let entry_in_data = elf(
            62,
            0x2000,
            &[(PF_X, 0x1000, &[0; 8], 8), (0, 0x2000, &[0; 8], 8)],
        );
        assert_eq!(
            plan(&entry_in_data, Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::BadEntry(0x2000))
        );
        assert_eq!(
            plan(&elf(62, 0x1000, &[]), Machine::X86_64, MEM.0, MEM.1),
            Err(ElfError::NoSegments)
        );
    }
}
