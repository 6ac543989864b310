//! The sampler of `realm_sample`: the algorithm of `realm/sampling.py` (briefs: repeat penalty,
//! greedy, top-k, top-p, min-p, temperature) with the splitmix64 RNG, reproduced step for step.

use crate::abi::SampleParams;
use core::cmp::Ordering;

/// splitmix64: advance `state` and return the next output.
pub fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform f64 in [0, 1) from the top 53 bits.
pub fn uniform(state: &mut u64) -> f64 {
    (next_u64(state) >> 11) as f64 * (1.0 / 9007199254740992.0)
}

/// Candidate order: logit descending, then token id ascending.
#[inline]
fn order(x: &[f32], a: u32, b: u32) -> Ordering {
    let (xa, xb) = (x[a as usize], x[b as usize]);
    if xa > xb {
        Ordering::Less
    } else if xa < xb {
        Ordering::Greater
    } else {
        a.cmp(&b)
    }
}

/// Sample a token id from `logits` given the evaluated `history`; returns (token, rng state after).
/// `x` (vocab floats), `cand` (capacity vocab) and `seen` (capacity >= repeat window) are scratch.
pub fn sample(
    logits: &[f32],
    history: &[i32],
    p: &SampleParams,
    x: &mut [f32],
    cand: &mut Vec<u32>,
    seen: &mut Vec<i32>,
) -> (i32, u64) {
    let vocab = logits.len();
    let x = &mut x[..vocab];
    x.copy_from_slice(logits);
    let mut state = p.rng_state;

    // 1. repeat penalty over the distinct tokens of the last repeat_last_n
    if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
        let n = (p.repeat_last_n as usize).min(history.len());
        seen.clear();
        seen.extend_from_slice(&history[history.len() - n..]);
        seen.sort_unstable();
        seen.dedup();
        for &t in seen.iter() {
            if t >= 0 && (t as usize) < vocab {
                let v = &mut x[t as usize];
                *v = if *v > 0.0 {
                    *v / p.repeat_penalty
                } else {
                    *v * p.repeat_penalty
                };
            }
        }
    }

    // 2. greedy
    if p.temperature <= 0.0 {
        let mut best = 0usize;
        for i in 1..vocab {
            if x[i] > x[best] {
                best = i;
            }
        }
        return (best as i32, state);
    }

    // 3. candidates sorted, top-k
    cand.clear();
    cand.extend(0..vocab as u32);
    if p.top_k > 0 && (p.top_k as usize) < vocab {
        let k = p.top_k as usize;
        cand.select_nth_unstable_by(k - 1, |&a, &b| order(x, a, b));
        cand.truncate(k);
    }
    cand.sort_unstable_by(|&a, &b| order(x, a, b));

    // 4. top-p: shortest prefix whose running sum of exp(x - x_max), over the total, reaches top_p
    if p.top_p < 1.0 {
        let xmax = x[cand[0] as usize] as f64;
        let total: f64 = cand.iter().map(|&i| (x[i as usize] as f64 - xmax).exp()).sum();
        let mut cum = 0.0f64;
        let mut keep = cand.len();
        for (n, &i) in cand.iter().enumerate() {
            cum += (x[i as usize] as f64 - xmax).exp();
            if cum / total >= p.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        cand.truncate(keep.max(1));
    }

    // 5. min-p: keep p_i >= min_p * p_max, i.e. exp(x_i - x_max) >= min_p (a prefix: x is sorted)
    if p.min_p > 0.0 {
        let xmax = x[cand[0] as usize] as f64;
        let keep = cand
            .iter()
            .take_while(|&&i| (x[i as usize] as f64 - xmax).exp() >= p.min_p as f64)
            .count();
        cand.truncate(keep.max(1));
    }

    // 6-7. temperature, then one draw
    let t = p.temperature as f64;
    let ymax = x[cand[0] as usize] as f64 / t;
    let total: f64 = cand.iter().map(|&i| (x[i as usize] as f64 / t - ymax).exp()).sum();
    let u = uniform(&mut state) * total;
    let mut acc = 0.0f64;
    for &i in cand.iter() {
        acc += (x[i as usize] as f64 / t - ymax).exp();
        if acc > u {
            return (i as i32, state);
        }
    }
    (*cand.last().unwrap() as i32, state)
}
