//! Activations and elementwise operations.

pub fn silu_gate(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| ((*a as f64) / (1.0 + (-*a as f64).exp()) * *b as f64) as f32).collect()
}

/// GELU, exact erf form: 0.5·x·(1 + erf(x/√2)).
pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (0.5 * *v as f64 * (1.0 + erf(*v as f64 / std::f64::consts::SQRT_2))) as f32).collect()
}

/// CLIP's QuickGELU: x·sigmoid(1.702·x).
pub fn quick_gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (*v as f64 / (1.0 + (-1.702 * *v as f64).exp())) as f32).collect()
}

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// erf in f64 to ~1e-15 (Taylor series near 0, continued fraction for erfc
/// beyond), independent of the shader's single-precision approximation.
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0f64;
        let mut term: f64 = ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -ax * ax / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (ax + f);
        }
        1.0 - (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f)
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}
