//! A few A64 instruction encodings, for the arm64 boot tests' hand-assembled programs (the
//! counterpart of the raw x86 bytes in `boot.rs`). Plain logic, tested on every host against
//! encodings from `llvm-mc --triple=aarch64 -show-encoding`.

/// `movz xd, #imm16, lsl #(16 * hw)` then a `movk` for every other non-zero chunk: `value`
/// in `xd`.
pub fn mov_imm(rd: u32, value: u64) -> Vec<u32> {
    let mut out = vec![0xd280_0000 | rd | ((value & 0xffff) as u32) << 5];
    for hw in 1..4u32 {
        let chunk = ((value >> (16 * hw)) & 0xffff) as u32;
        if chunk != 0 {
            out.push(0xf280_0000 | (hw << 21) | (chunk << 5) | rd);
        }
    }
    out
}

/// `strb wt, [xn]`
pub fn strb(rt: u32, rn: u32) -> u32 {
    0x3900_0000 | (rn << 5) | rt
}

/// `str wt, [xn]`
pub fn str_w(rt: u32, rn: u32) -> u32 {
    0xb900_0000 | (rn << 5) | rt
}

/// `ldr xt, [xn]`
pub fn ldr_x(rt: u32, rn: u32) -> u32 {
    0xf940_0000 | (rn << 5) | rt
}

/// `b .`: spin forever.
pub const SPIN: u32 = 0x1400_0000;
/// `hvc #0`: an SMCCC call (PSCI) from EL1.
pub const HVC0: u32 = 0xd400_0002;

/// The little-endian bytes of `insns`.
pub fn bytes(insns: &[u32]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_assembler() {
        // movz x0, #0; movk x0, #0xd000, lsl #16
        assert_eq!(mov_imm(0, 0xd000_0000), [0xd280_0000, 0xf2ba_0000]);
        // movz x0, #0x1234; movk x0, #0xd000, lsl #16
        assert_eq!(mov_imm(0, 0xd000_1234), [0xd282_4680, 0xf2ba_0000]);
        assert_eq!(mov_imm(1, 0x68), [0xd280_0d01]);
        assert_eq!(mov_imm(3, 0), [0xd280_0003]);
        assert_eq!(mov_imm(0, 0x8400_0008), [0xd280_0100, 0xf2b0_8000]);
        assert_eq!(strb(1, 0), 0x3900_0001);
        assert_eq!(str_w(1, 2), 0xb900_0041);
        assert_eq!(ldr_x(1, 0), 0xf940_0001);
        assert_eq!(bytes(&[HVC0]), [0x02, 0x00, 0x00, 0xd4]);
    }
}
