//! Randomness for DNS: query ids (RFC 5452 §9.2: unpredictable ids make
//! off-path spoofing hard), the starting server with `rotate`, and the order
//! of MX hosts of equal preference (RFC 5321 §5.1).
//!
//! Place in the pipeline: owned by each shard's resolver; the sans-IO parts
//! (exchange, MX planning) take it as an argument so tests pass a seeded one
//! and replay a run from its seed.
//!
//! Bounds: a fixed buffer of `BUFFER_BYTES`, refilled from the kernel's
//! CSPRNG (getrandom(2)) when used up, so a query costs no system call.

/// Bytes drawn from the source at a time.
const BUFFER_BYTES: usize = 256;

#[derive(Debug)]
enum Source {
    /// getrandom(2): unpredictable, for production.
    Os,
    /// splitmix64 from a seed: reproducible, for tests only.
    Seeded(u64),
}

/// A buffered source of random numbers.
#[derive(Debug)]
pub struct Random {
    source: Source,
    buffer: [u8; BUFFER_BYTES],
    /// Bytes of `buffer` already handed out.
    used_bytes: usize,
}

impl Random {
    /// Unpredictable numbers from the kernel.
    pub fn from_os() -> Random {
        Random { source: Source::Os, buffer: [0; BUFFER_BYTES], used_bytes: BUFFER_BYTES }
    }

    /// Reproducible numbers: the same seed gives the same sequence. Never for
    /// query ids in production.
    pub fn from_seed(seed: u64) -> Random {
        Random { source: Source::Seeded(seed), buffer: [0; BUFFER_BYTES], used_bytes: BUFFER_BYTES }
    }

    pub fn next_u16(&mut self) -> u16 {
        let mut bytes = [0u8; 2];
        self.fill(&mut bytes);
        u16::from_le_bytes(bytes)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A number in `0..bound` (Lemire's multiply-shift; the bias is below
    /// 2^-32 for the small bounds used here).
    pub fn below(&mut self, bound: usize) -> usize {
        assert!(bound > 0, "below(0) has no answer");
        let product = u128::from(self.next_u64()) * bound as u128;
        let index = (product >> 64) as usize;
        debug_assert!(index < bound);
        index
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        debug_assert!(out.len() <= BUFFER_BYTES);
        if self.used_bytes + out.len() > BUFFER_BYTES {
            self.refill();
        }
        out.copy_from_slice(&self.buffer[self.used_bytes..self.used_bytes + out.len()]);
        self.used_bytes += out.len();
    }

    fn refill(&mut self) {
        match &mut self.source {
            Source::Os => getrandom(&mut self.buffer),
            Source::Seeded(state) => {
                for chunk in self.buffer.chunks_mut(8) {
                    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
                }
            }
        }
        self.used_bytes = 0;
    }
}

/// Fills `buffer` from getrandom(2), which cannot fail on the kernels
/// io_uring needs (≥ 5.8) once the pool is initialised, except for EINTR.
fn getrandom(buffer: &mut [u8]) {
    let mut filled_bytes = 0;
    while filled_bytes < buffer.len() {
        let rest = &mut buffer[filled_bytes..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(error.kind(), std::io::ErrorKind::Interrupted, "getrandom(2) failed: {error}");
            continue;
        }
        filled_bytes += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_os_differs() {
        let (mut a, mut b) = (Random::from_seed(7), Random::from_seed(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut os = Random::from_os();
        let ids: std::collections::HashSet<u64> = (0..100).map(|_| os.next_u64()).collect();
        assert!(ids.len() > 95, "the kernel's numbers repeat");
    }

    #[test]
    fn below_stays_in_range_and_shuffle_permutes() {
        let mut random = Random::from_seed(1);
        for bound in 1..50 {
            assert!(random.below(bound) < bound);
        }
        let mut items: Vec<u32> = (0..20).collect();
        random.shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<u32>>());
        assert_ne!(items, sorted, "20 items left in order by chance: 1 in 20!");
    }
}
