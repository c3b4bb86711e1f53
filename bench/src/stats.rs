//! Percentiles and summaries of latency samples.

use serde::Serialize;

/// Nearest-rank percentile (`p` in 0–100) of `xs`; 0 for no samples.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// p50/p99/mean of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Millis {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub samples: usize,
}

impl Millis {
    pub fn of_seconds(xs: &[f64]) -> Self {
        let ms: Vec<f64> = xs.iter().map(|s| s * 1000.0).collect();
        Self {
            p50: round3(percentile(&ms, 50.0)),
            p99: round3(percentile(&ms, 99.0)),
            mean: round3(mean(&ms)),
            samples: ms.len(),
        }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), 50.0);
        assert_eq!(percentile(&xs, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
