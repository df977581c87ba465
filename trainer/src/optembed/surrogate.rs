//! The step function of OptEmbed's row mask with its surrogate gradient (Lyu et al.
//! 2022, eq. 5-6): forward `1[x > 0]`; backward `g * (2 - 4|x|)` for `|x| <= 0.4`,
//! `g * 0.4` for `0.4 < |x| <= 1`, `0` beyond. libtorch's autograd cannot be given a
//! custom backward from Rust, so the value is built as
//! `step(x).detach() + (x - x.detach()) * s(x).detach()`: its value is the step and its
//! derivative with respect to `x` is exactly `s(x)`.

use tch::{Kind, Tensor};

/// The surrogate derivative `s(x)` (no gradient of its own).
fn surrogate_slope(x: &Tensor) -> Tensor {
    let a = x.detach().abs();
    let near = a.le(0.4);
    let mid = a.gt(0.4).logical_and(&a.le(1.0));
    let slope_near = (&a * -4.0) + 2.0;
    slope_near * near.to_kind(Kind::Float) + mid.to_kind(Kind::Float) * 0.4
}

/// `1[x > 0]` forward, the surrogate gradient backward.
pub fn step_with_surrogate(x: &Tensor) -> Tensor {
    let hard = x.detach().gt(0.0).to_kind(x.kind());
    hard + (x - x.detach()) * surrogate_slope(x).to_kind(x.kind())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_is_the_step_and_backward_the_surrogate() {
        let xs = [-1.5f32, -0.7, -0.2, 0.0, 0.1, 0.4, 0.5, 1.0, 2.0];
        let x = Tensor::from_slice(&xs).set_requires_grad(true);
        let y = step_with_surrogate(&x);
        let values = Vec::<f32>::try_from(&y.detach()).unwrap();
        let expect: Vec<f32> = xs.iter().map(|&v| f32::from(v > 0.0)).collect();
        assert_eq!(values, expect);
        y.sum(Kind::Float).backward();
        let grads = Vec::<f32>::try_from(&x.grad()).unwrap();
        for (&v, &g) in xs.iter().zip(&grads) {
            let a = v.abs();
            let want = if a <= 0.4 {
                2.0 - 4.0 * a
            } else if a <= 1.0 {
                0.4
            } else {
                0.0
            };
            assert!(
                (g - want).abs() < 1e-6,
                "x = {v}: gradient {g}, want {want}"
            );
        }
    }
}
