//! Dividing a memory budget among tables whose size is free (hashed, quotient-remainder,
//! the unified pool): each gets a share in proportion to a weight, never below the least
//! it can work with nor above what one row per id needs, the rest going to the others
//! (water filling). The builder weighs a table of `V` ids by `sqrt(V)`: with `R_t` rows
//! for `V_t` ids, a sample's expected number of colliding features is about
//! `sum_t V_t / R_t`, which under `sum_t R_t = R` is smallest at `R_t ~ sqrt(V_t)`, so
//! small tables end up collisionless and the big ones share the rest. Budgets are given,
//! as in the compression benchmark of Zhang et al. (VLDB 2024), in bytes or as a
//! fraction of the collisionless bytes.

/// One table (or the unified pool) to size.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub name: String,
    /// Share weight: the collisionless bytes it stands for.
    pub weight: f64,
    /// Fewest bytes it can have.
    pub min: u64,
    /// Most bytes worth giving it.
    pub max: u64,
}

/// A budget below the claims' minimums: what it is, what they need, and the claim with
/// the largest minimum.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{budget} bytes cannot hold these tables: they need at least {need}{}", .largest.as_ref().map(|(n, b)| format!("; `{n}` alone needs at least {b} bytes")).unwrap_or_default())]
pub struct BudgetShortfall {
    pub budget: u64,
    pub need: u64,
    pub largest: Option<(String, u64)>,
}

/// Bytes for each claim, summing to at most `budget`; an error names the claim whose
/// minimum does not fit.
pub fn allocate(budget: u64, claims: &[Claim]) -> Result<Vec<u64>, BudgetShortfall> {
    let need: u64 = claims.iter().map(|c| c.min).sum();
    if need > budget {
        return Err(BudgetShortfall {
            budget,
            need,
            largest: claims
                .iter()
                .max_by_key(|c| c.min)
                .map(|c| (c.name.clone(), c.min)),
        });
    }
    let mut fixed: Vec<Option<u64>> = vec![None; claims.len()];
    loop {
        let left = budget - fixed.iter().flatten().sum::<u64>();
        let free_weight: f64 = claims
            .iter()
            .zip(&fixed)
            .filter(|(_, f)| f.is_none())
            .map(|(c, _)| c.weight.max(1.0))
            .sum();
        let mut changed = false;
        for (c, f) in claims.iter().zip(fixed.iter_mut()) {
            if f.is_some() {
                continue;
            }
            let share = (left as f64 * c.weight.max(1.0) / free_weight.max(1.0)).floor() as u64;
            if share < c.min {
                *f = Some(c.min);
                changed = true;
            } else if share > c.max {
                *f = Some(c.max);
                changed = true;
            }
        }
        if !changed {
            return Ok(claims
                .iter()
                .zip(&fixed)
                .map(|(c, f)| {
                    f.unwrap_or_else(|| {
                        (left as f64 * c.weight.max(1.0) / free_weight.max(1.0)).floor() as u64
                    })
                })
                .collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, weight: f64, min: u64, max: u64) -> Claim {
        Claim {
            name: name.into(),
            weight,
            min,
            max,
        }
    }

    #[test]
    fn shares_follow_weights_within_bounds() {
        let got = allocate(
            1000,
            &[claim("a", 3.0, 0, 10_000), claim("b", 1.0, 0, 10_000)],
        )
        .unwrap();
        assert_eq!(got, vec![750, 250]);
        // `a` needs at most 100: the rest goes to `b`
        let got = allocate(1000, &[claim("a", 3.0, 0, 100), claim("b", 1.0, 0, 10_000)]).unwrap();
        assert_eq!(got, vec![100, 900]);
        // `b`'s minimum is above its share
        let got = allocate(
            1000,
            &[claim("a", 9.0, 0, 10_000), claim("b", 1.0, 400, 10_000)],
        )
        .unwrap();
        assert_eq!(got, vec![600, 400]);
        assert!(got.iter().sum::<u64>() <= 1000);
    }

    #[test]
    fn an_impossible_budget_names_the_biggest_minimum() {
        let e = allocate(
            100,
            &[claim("small", 1.0, 10, 50), claim("C3", 1.0, 200, 900)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("100 bytes") && e.contains("at least 210") && e.contains("`C3`"),
            "{e}"
        );
    }
}
