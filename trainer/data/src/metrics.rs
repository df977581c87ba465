//! Offline evaluation metrics: exact AUC (sort-based, tied scores share their average
//! rank, as `sklearn.metrics.roc_auc_score`), logloss (predictions clipped to
//! [1e-7, 1 - 1e-7], as the peers' scripts do) and GAUC (per-group AUC weighted by the
//! group's number of samples, over groups with both classes; Zhou et al., DIN, KDD 2018).
//!
//! AUC is computed over all predictions at once, never averaged over parts (the bug of
//! facebookresearch/dlrm#324); the distributed trainer gathers predictions first.

use std::collections::HashMap;

/// Area under the ROC curve; `None` when only one class is present.
pub fn auc(labels: &[f32], scores: &[f32]) -> Option<f64> {
    let n = labels.len().min(scores.len());
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.sort_unstable_by(|&a, &b| scores[a as usize].total_cmp(&scores[b as usize]));
    let mut pos = 0f64;
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1] as usize] == scores[idx[i] as usize] {
            j += 1;
        }
        // ranks i+1 ..= j+1 share their mean
        let mean_rank = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            if labels[k as usize] > 0.5 {
                pos += 1.0;
                rank_sum += mean_rank;
            }
        }
        i = j + 1;
    }
    let neg = n as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Mean binary cross-entropy of probabilities.
pub fn logloss(labels: &[f32], probs: &[f32]) -> f64 {
    let n = labels.len().min(probs.len());
    if n == 0 {
        return f64::NAN;
    }
    let total: f64 = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
            if y > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / n as f64
}

/// Group AUC; `None` when no group has both classes.
pub fn gauc(labels: &[f32], scores: &[f32], groups: &[u64]) -> Option<f64> {
    let mut by_group: HashMap<u64, Vec<u32>> = HashMap::new();
    for (i, &g) in groups.iter().enumerate().take(labels.len()) {
        by_group.entry(g).or_default().push(i as u32);
    }
    let mut keys: Vec<u64> = by_group.keys().copied().collect();
    keys.sort_unstable();
    let (mut weighted, mut weight) = (0f64, 0f64);
    for g in keys {
        let rows = &by_group[&g];
        let l: Vec<f32> = rows.iter().map(|&i| labels[i as usize]).collect();
        let s: Vec<f32> = rows.iter().map(|&i| scores[i as usize]).collect();
        if let Some(a) = auc(&l, &s) {
            weighted += a * rows.len() as f64;
            weight += rows.len() as f64;
        }
    }
    (weight > 0.0).then(|| weighted / weight)
}

/// Unweighted mean of the AUCs of the groups that have both classes (DARE's
/// category-averaged AUC, grouping by the target's category); `None` when none has.
pub fn group_mean_auc(labels: &[f32], scores: &[f32], groups: &[u64]) -> Option<f64> {
    let mut by_group: HashMap<u64, (Vec<f32>, Vec<f32>)> = HashMap::new();
    for ((&g, &l), &s) in groups.iter().zip(labels).zip(scores) {
        let e = by_group.entry(g).or_default();
        e.0.push(l);
        e.1.push(s);
    }
    let mut keys: Vec<u64> = by_group.keys().copied().collect();
    keys.sort_unstable();
    let aucs: Vec<f64> = keys
        .iter()
        .filter_map(|g| {
            let (l, s) = &by_group[g];
            auc(l, s)
        })
        .collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_mean_auc_weighs_groups_equally() {
        // group 1: perfect (AUC 1) on 2 rows; group 2: inverted (AUC 0) on 4 rows;
        // group 3 has one class and is left out
        let labels = [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let scores = [0.1, 0.9, 0.9, 0.8, 0.2, 0.1, 0.5];
        let groups = [1, 1, 2, 2, 2, 2, 3];
        assert_eq!(group_mean_auc(&labels, &scores, &groups), Some(0.5));
        assert!((gauc(&labels, &scores, &groups).unwrap() - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(group_mean_auc(&[1.0], &[0.5], &[3]), None);
    }

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(auc(&[0.0, 1.0], &[0.1, 0.9]), Some(1.0));
        assert_eq!(auc(&[0.0, 1.0], &[0.9, 0.1]), Some(0.0));
        assert_eq!(auc(&[0.0, 1.0], &[0.5, 0.5]), Some(0.5));
        // sklearn: roc_auc_score([0,0,1,1,0,1], [.1,.4,.35,.8,.4,.4]) = 0.6667
        let a = auc(
            &[0.0, 0.0, 1.0, 1.0, 0.0, 1.0],
            &[0.1, 0.4, 0.35, 0.8, 0.4, 0.4],
        )
        .unwrap();
        assert!((a - 2.0 / 3.0).abs() < 1e-9, "{a}");
        assert_eq!(auc(&[1.0, 1.0], &[0.1, 0.2]), None);
    }

    #[test]
    fn logloss_clips_and_averages() {
        let l = logloss(&[1.0, 0.0], &[0.5, 0.5]);
        assert!((l - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(logloss(&[1.0], &[0.0]).is_finite());
    }

    #[test]
    fn gauc_weights_groups_by_size_and_skips_one_class_groups() {
        let labels = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let scores = [0.9, 0.1, 0.2, 0.8, 0.5, 0.5];
        let groups = [1, 1, 2, 2, 2, 3];
        // group 1: auc 1 (2 rows); group 2: auc 0 (3 rows); group 3 skipped
        assert!((gauc(&labels, &scores, &groups).unwrap() - 0.4).abs() < 1e-12);
    }
}
