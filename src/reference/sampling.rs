//! Greedy argmax, the top-k summary, and the spec's temperature + top-p
//! sampler (spec §5: softmax(logits/T), drop tokens whose *exclusive*
//! cumulative probability exceeds top_p, renormalise, draw).

/// Index of the largest logit; ties go to the lowest index, NaN counts as −∞.
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, v) in logits.iter().enumerate() {
        let v = if v.is_nan() { f32::NEG_INFINITY } else { *v };
        if v > best_v || i == 0 {
            best = i;
            best_v = v;
        }
    }
    best
}

/// The k best (logit, index), descending, ties by lower index; plus the max
/// and Z = Σ exp((logit − max)/T) over the whole row.
pub fn top_k(logits: &[f32], k: usize, temperature: f32) -> (f32, f64, Vec<(f32, u32)>) {
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b)));
    let max = logits[order[0] as usize];
    let z = logits.iter().map(|l| ((*l as f64 - max as f64) / temperature as f64).exp()).sum();
    let entries = order.iter().take(k).map(|i| (logits[*i as usize], *i)).collect();
    (max, z, entries)
}

/// The sampler of spec §5 on candidates already sorted descending, given as
/// probabilities of the full distribution. `u` is uniform in [0, 1).
/// Returns the chosen candidate's position in `probs`.
pub fn sample_top_p_sorted(probs: &[f64], top_p: f64, u: f64) -> usize {
    let mut kept = 0;
    let mut cumulative = 0.0;
    for p in probs {
        // Exclusive cumulative mass; the first token is always kept.
        if kept > 0 && cumulative > top_p {
            break;
        }
        cumulative += p;
        kept += 1;
    }
    let total: f64 = probs[..kept].iter().sum();
    let mut target = u * total;
    for (i, p) in probs[..kept].iter().enumerate() {
        if target < *p {
            return i;
        }
        target -= p;
    }
    kept - 1
}

/// Spec §5 on a whole row of logits; returns the token id.
pub fn sample_top_p(logits: &[f32], temperature: f32, top_p: f64, u: f64) -> u32 {
    let (max, z, entries) = top_k(logits, logits.len(), temperature);
    let probs: Vec<f64> = entries.iter().map(|(l, _)| ((*l as f64 - max as f64) / temperature as f64).exp() / z).collect();
    entries[sample_top_p_sorted(&probs, top_p, u)].1
}
