//! `kind = "disk"`: a raw image of pseudo-random bytes for the disk benchmark. Not a file
//! system; random so that no layer (sparse files, zero-page dedup, compression) can make
//! reading it cheaper than reading a real disk, and with no zero byte at all.

use std::io::{self, Write};

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and well distributed for this use.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether any byte of `v` is zero (the classic bit trick).
fn has_zero_byte(v: u64) -> bool {
    v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080 != 0
}

/// Writes `size_mib` MiB derived from `seed` only.
pub(crate) fn write_disk(w: &mut dyn Write, size_mib: u64, seed: u64) -> io::Result<()> {
    let mut state = seed;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..size_mib {
        for chunk in buf.chunks_exact_mut(8) {
            let mut v = splitmix64(&mut state);
            if has_zero_byte(v) {
                let mut b = v.to_le_bytes();
                for x in &mut b {
                    if *x == 0 {
                        *x = 0xA5;
                    }
                }
                v = u64::from_le_bytes(b);
            }
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_nonzero_and_seeded() {
        let mut a = Vec::new();
        write_disk(&mut a, 2, 7).unwrap();
        let mut b = Vec::new();
        write_disk(&mut b, 2, 7).unwrap();
        let mut c = Vec::new();
        write_disk(&mut c, 2, 8).unwrap();
        assert_eq!(a.len(), 2 << 20);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a.contains(&0));
        // Roughly uniform: every non-zero byte value shows up.
        let mut seen = [false; 256];
        a.iter().for_each(|&x| seen[x as usize] = true);
        assert_eq!(seen.iter().filter(|s| **s).count(), 255);
    }

    #[test]
    fn zero_byte_trick() {
        assert!(has_zero_byte(0x0100_0000_0000_0001));
        assert!(!has_zero_byte(0x0101_0101_0101_0101));
        assert!(has_zero_byte(0xFF00_FFFF_FFFF_FFFF));
    }
}
