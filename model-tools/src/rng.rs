//! A tiny seeded PRNG (splitmix64) with an approximately normal sampler. Only additions and
//! multiplications, so the same seed gives the same weights on every platform.

/// splitmix64: a fast, well-mixed 64-bit generator.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Approximately N(0, 1): the sum of four uniforms (Irwin-Hall), centred and scaled to
    /// unit variance. Bounded to ±2√3, which suits weight initialisation.
    pub fn normal(&mut self) -> f32 {
        const SQRT_3: f64 = 1.732_050_807_568_877_2;
        let sum = self.uniform() + self.uniform() + self.uniform() + self.uniform();
        ((sum - 2.0) * SQRT_3) as f32
    }
}
