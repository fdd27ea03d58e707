//! Greedy argmax and the top-k/top-p helper against the CPU reference.

mod common;

use common::{gpu, run};
use llama_adapter_web::kernels::sampling::{argmax, top_k, top_k_words, TopK};
use llama_adapter_web::reference;
use llama_adapter_web::util::Rng;

fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    rng.vec_normal(n, 3.0)
}

#[test]
fn argmax_matches_reference() {
    let ctx = gpu();
    let result = ctx.storage("result", 8);
    for (n, seed) in [(1usize, 1u64), (255, 2), (32000, 3), (32000, 4), (50257, 5)] {
        let mut l = logits(n, seed);
        if seed == 4 {
            // Ties go to the lowest index; NaN never wins.
            l[31999] = 100.0;
            l[12345] = 100.0;
            l[7] = f32::NAN;
        }
        // Put the row at an offset inside a larger buffer.
        let mut buf = vec![1e30f32; 3];
        buf.extend(&l);
        let lg = ctx.upload("logits", &buf);
        run(ctx, &[argmax(ctx, &lg, 3, n, &result).unwrap()]);
        let got: Vec<u32> = ctx.read_blocking(&result, 0, 2).unwrap();
        let want = reference::sampling::argmax(&l);
        assert_eq!(got[0] as usize, want, "argmax n={n}");
        assert_eq!(f32::from_bits(got[1]), l[want]);
    }
}

#[test]
fn top_k_and_top_p_match_reference() {
    let ctx = gpu();
    let n = 32000;
    for (seed, k, temperature) in [(10u64, 1usize, 1.0f32), (11, 40, 0.1), (12, 64, 0.7), (13, 256, 1.0)] {
        let l = logits(n, seed);
        let lg = ctx.upload("logits", &l);
        let result = ctx.storage("result", (top_k_words(k) * 4) as u64);
        run(ctx, &[top_k(ctx, &lg, 0, n, k, temperature, &result).unwrap()]);
        let words: Vec<u32> = ctx.read_blocking(&result, 0, top_k_words(k)).unwrap();
        let got = TopK::from_words(&words);
        let (max, z, entries) = reference::sampling::top_k(&l, k, temperature);
        assert_eq!(got.max, max);
        assert_eq!(got.entries, entries, "top-{k} entries");
        // Z: a sum of 32000 positive f32 terms; relative error ≲ √n·u·… allow 1e-5.
        assert!(((got.z as f64 - z) / z).abs() < 1e-5, "Z {} vs {z}", got.z);

        // Spec §5's draw from the k candidates equals the draw over the full
        // row for the same uniform variate, whenever the nucleus fits in k.
        let mut rng = Rng::new(seed);
        let mut compared = 0;
        for _ in 0..200 {
            let u = rng.uniform();
            for top_p in [0.1, 0.5, 0.75, 0.9] {
                match got.sample_top_p(temperature, top_p, u) {
                    Some(token) => {
                        assert_eq!(token, reference::sampling::sample_top_p(&l, temperature, top_p, u), "k={k} T={temperature} p={top_p} u={u}");
                        compared += 1;
                    }
                    None => {
                        let mass: f64 = entries.iter().map(|(x, _)| ((*x as f64 - max as f64) / temperature as f64).exp() / z).sum();
                        assert!(mass <= top_p + 1e-6, "declined although the candidates hold {mass} > {top_p}");
                    }
                }
            }
        }
        if temperature <= 0.1 {
            assert!(compared > 0, "a sharp distribution must fit in the candidates");
        }
    }
}
