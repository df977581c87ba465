//! Zipf sampling over ranks 1..=n in O(1) expected time and memory for any n (up to
//! 10^8 and beyond): rejection-inversion, Hörmann and Derflinger, "Rejection-inversion to
//! generate variates from monotone discrete distributions", ACM TOMACS 1996.

/// Zipf(n, s): P(k) proportional to k^-s, k in 1..=n.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    squeeze: f64,
}

fn helper1(x: f64) -> f64 {
    // ln(1 + x) / x, accurate near 0
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

fn helper2(x: f64) -> f64 {
    // (exp(x) - 1) / x, accurate near 0
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

impl Zipf {
    /// `n >= 1`, `s > 0`.
    pub fn new(n: u64, s: f64) -> Self {
        let n = n.max(1) as f64;
        let mut z = Self {
            n,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            squeeze: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(n + 0.5);
        z.squeeze = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper2((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in 1..=n from uniform draws in [0, 1) supplied by `uniform`.
    pub fn sample(&self, mut uniform: impl FnMut() -> f64) -> u64 {
        loop {
            let u = self.h_n + uniform() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrec_tables::mix64;

    #[test]
    fn frequencies_follow_the_power_law() {
        let z = Zipf::new(50, 1.2);
        let mut state = 1u64;
        let mut uni = || {
            state = state.wrapping_add(1);
            (mix64(state) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut counts = vec![0u64; 51];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut uni) as usize] += 1;
        }
        let norm: f64 = (1..=50).map(|k| (k as f64).powf(-1.2)).sum();
        for k in [1usize, 2, 5, 20] {
            let want = (k as f64).powf(-1.2) / norm;
            let got = counts[k] as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.01 + want * 0.05,
                "k={k} got {got} want {want}"
            );
        }
        assert_eq!(counts[0], 0);
        let big = Zipf::new(100_000_000, 1.05);
        for _ in 0..1000 {
            let k = big.sample(&mut uni);
            assert!((1..=100_000_000).contains(&k));
        }
    }
}
