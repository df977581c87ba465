//! The factorisation-machine pairwise term (Rendle, "Factorization Machines", ICDM 2010):
//! sum over feature pairs of <v_i, v_j>, computed in O(F d) as
//! 0.5 * sum_d((sum_i v_i)^2 - sum_i v_i^2).

use tch::Tensor;

/// # Shapes
/// `[batch, features, dim] -> [batch]`
pub fn fm_pairwise(v: &Tensor) -> Tensor {
    let sum = v.sum_dim_intlist(1i64, false, None);
    let sum_sq = (v * v).sum_dim_intlist(1i64, false, None);
    ((&sum * &sum) - sum_sq).sum_dim_intlist(1i64, false, None) * 0.5
}
