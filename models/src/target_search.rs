//! The search stage of TWIN (Chang et al. 2023) and DARE (Feng et al., "Long-Sequence
//! Recommendation Models Need Decoupled Embeddings", ICLR 2025, arXiv 2410.02604):
//! every behaviour is scored against the target by a dot product of attention
//! embeddings, `s_i = <q_sem, k_sem_i> / sqrt(d_sem) + <q_t, k_t_i> / sqrt(d_t)`, padding
//! gets a very negative score, and the top `K` are kept. One batched matrix-vector
//! product (`[B, L, D] x [B, D]`) plus a top-K: linear in `L * D`, nothing quadratic.

use tch::{Kind, Tensor};

use crate::sequence_parts::SetWidths;

/// Score of a padded slot: far below any real score, finite so softmax stays defined.
pub const PADDING_SCORE: f64 = -1e9;

/// Relevance of every history slot to its sample's target.
/// # Shapes
/// `query [B, D], keys [B, L, D], mask [B, L] -> [B, L]`
pub fn relevance_scores(
    query: &Tensor,
    keys: &Tensor,
    mask: &Tensor,
    widths: &SetWidths,
) -> Tensor {
    // one product over the whole width: scaling the query's semantic and time parts by
    // their 1 / sqrt(d) gives the sum of the two scaled dot products
    let (sem, time) = (widths.semantic(), widths.time);
    let scale = |w: i64| if w > 0 { 1.0 / (w as f64).sqrt() } else { 0.0 };
    let mut parts = vec![query.narrow(1, 0, sem) * scale(sem)];
    if time > 0 {
        parts.push(query.narrow(1, sem, time) * scale(time));
    }
    // as [B, 1, D] x [B, D, L]: libtorch's CPU kernels run this form about twice as fast
    // as [B, L, D] x [B, D, 1]
    let q = Tensor::cat(&parts, 1).unsqueeze(1);
    let s = q.matmul(&keys.transpose(1, 2)).squeeze_dim(1);
    if mask.numel() > 0 && mask.all().int64_value(&[]) != 0 {
        // every slot holds a behaviour (histories at least L long): nothing to mask
        return s;
    }
    s.masked_fill(&mask.logical_not(), PADDING_SCORE)
}

/// The `k` best slots of each row (`k` at most `L`), best first: (scores, slots).
/// # Shapes
/// `scores [B, L] -> ([B, k], [B, k] int64)`
pub fn search_top_k(scores: &Tensor, k: i64) -> (Tensor, Tensor) {
    let k = k.min(scores.size()[1]);
    // an unsorted selection, then a sort of the K: cheaper than a sorted top-K over L
    let (top, slots) = scores.topk(k, 1, true, false);
    let (top, order) = top.sort(1, true);
    (top, slots.gather(1, &order, false))
}

/// `sum_i softmax(scores)_i * values[slots_i]`: the values of the chosen slots, weighted.
/// # Shapes
/// `top_scores [B, K], slots [B, K], values [B, L, D] -> [B, D]`
pub fn aggregate(top_scores: &Tensor, slots: &Tensor, values: &Tensor) -> Tensor {
    let d = values.size()[2];
    let idx = slots.unsqueeze(2).expand([-1, -1, d], false);
    let chosen = values.gather(1, &idx, false);
    let w = top_scores.softmax(1, Kind::Float).unsqueeze(2);
    (chosen * w).sum_dim_intlist(1, false, Kind::Float)
}

/// Softmax attention over every slot (padding masked by its score).
/// # Shapes
/// `scores [B, L], values [B, L, D] -> [B, D]`
pub fn aggregate_all(scores: &Tensor, values: &Tensor) -> Tensor {
    let w = scores.softmax(1, Kind::Float).unsqueeze(1);
    w.matmul(values).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_split_semantic_and_time_and_mask_padding() {
        let w = SetWidths {
            item: 1,
            category: 1,
            time: 1,
        };
        let q = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([1, 3]);
        let k =
            Tensor::from_slice(&[0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0, 1.0]).view([1, 3, 3]);
        let mask = Tensor::from_slice(&[false, true, true]).view([1, 3]);
        let s = Vec::<f32>::try_from(relevance_scores(&q, &k, &mask, &w).view([-1])).unwrap();
        assert!(s[0] < -1e8);
        let r2 = 2f32.sqrt();
        assert!((s[1] - (3.0 / r2 + 3.0)).abs() < 1e-5);
        assert!((s[2] - (2.0 / r2 + 3.0)).abs() < 1e-5);
        let (top, slots) = search_top_k(&relevance_scores(&q, &k, &mask, &w), 2);
        assert_eq!(Vec::<i64>::try_from(slots.view([-1])).unwrap(), vec![1, 2]);
        let values = Tensor::from_slice(&[9.0f32, 1.0, 3.0]).view([1, 3, 1]);
        let h = aggregate(&top, &slots, &values).double_value(&[0, 0]);
        let (a, b) = ((3.0 / r2 + 3.0) as f64, (2.0 / r2 + 3.0) as f64);
        let wa = 1.0 / (1.0 + (b - a).exp());
        assert!((h - (wa * 1.0 + (1.0 - wa) * 3.0)).abs() < 1e-5);
        // all-slot attention never weighs the padded slot
        let all =
            aggregate_all(&relevance_scores(&q, &k, &mask, &w), &values).double_value(&[0, 0]);
        assert!((all - h).abs() < 1e-5);
    }

    #[test]
    fn k_larger_than_history_takes_every_slot() {
        let s = Tensor::from_slice(&[0.5f32, 0.1]).view([1, 2]);
        let (top, slots) = search_top_k(&s, 20);
        assert_eq!(top.size(), vec![1, 2]);
        assert_eq!(Vec::<i64>::try_from(slots.view([-1])).unwrap(), vec![0, 1]);
    }
}
