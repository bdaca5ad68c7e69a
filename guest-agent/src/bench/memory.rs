//! Memory: repeated sums of two big matrices into a third (paper II.A):
//! C[i][j] = A[i][j] + B[i][j] + C[i][j], with A = B = i + j and C = 0 initially.
//! Per pass each element is read three times and written once: memory traffic with
//! negligible computation.

/// Three n×n row-major matrices of f64 (exact for the values used, see `check`).
pub struct Matrices {
    n: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

impl Matrices {
    /// Allocates and initialises the matrices (not timed). Fails instead of aborting
    /// when the guest lacks memory.
    pub fn new(n: usize) -> Result<Self, String> {
        let len = n.checked_mul(n).ok_or("memory: n overflows")?;
        let alloc = |what: &str| -> Result<Vec<f64>, String> {
            let mut v = Vec::new();
            v.try_reserve_exact(len)
                .map_err(|_| format!("memory: cannot allocate matrix {what} ({n}×{n} f64)"))?;
            Ok(v)
        };
        let (mut a, mut b, mut c) = (alloc("A")?, alloc("B")?, alloc("C")?);
        for i in 0..n {
            for j in 0..n {
                let v = (i + j) as f64;
                a.push(v);
                b.push(v);
                c.push(0.0);
            }
        }
        Ok(Self { n, a, b, c })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// The timed part: `passes` sweeps of C = A + B + C.
    // Written as the paper writes it, so the kernel reads as the one being reproduced.
    #[allow(clippy::assign_op_pattern)]
    pub fn run(&mut self, passes: u32) {
        for _ in 0..passes {
            for ((c, a), b) in self.c.iter_mut().zip(&self.a).zip(&self.b) {
                *c = *a + *b + *c;
            }
            // Keep each pass observable so passes are not fused or dropped.
            std::hint::black_box(&mut self.c);
        }
    }

    /// After `passes` sweeps every C[i][j] must be passes·2·(i+j) exactly.
    pub fn check(&self, passes: u32) -> bool {
        let p = passes as f64;
        (0..self.n).all(|i| (0..self.n).all(|j| self.c[i * self.n + j] == p * 2.0 * (i + j) as f64))
    }

    /// Bytes moved by `passes` sweeps: three 8-byte reads and one write per element.
    pub fn bytes_moved(&self, passes: u32) -> u64 {
        (self.n * self.n) as u64 * 8 * 4 * passes as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_matches_formula() {
        let mut m = Matrices::new(37).unwrap();
        m.run(3);
        assert!(m.check(3));
        assert!(!m.check(2));
        // Row 1, column 2 of the 37 × 37 matrix: A = B = i + j = 3.
        assert_eq!(m.c[37 + 2], 3.0 * 2.0 * 3.0);
        assert_eq!(m.bytes_moved(3), 37 * 37 * 32 * 3);
    }

    #[test]
    fn corrupted_result_fails_check() {
        let mut m = Matrices::new(8).unwrap();
        m.run(1);
        m.c[63] += 1.0;
        assert!(!m.check(1));
    }
}
