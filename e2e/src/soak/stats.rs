//! Pure figures over a soak's samples: percentiles of cycle times, the windows a
//! growth is judged on, and the least-squares trend of a series.

/// The `p`-th percentile (0..=100) of `values` by the nearest-rank method (the smallest
/// value at or above which `p` % of the values lie); `None` for no values. Nearest rank
/// keeps a p99 over 30 cycles the slowest cycle, not an interpolation no cycle took.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median (50th percentile, nearest rank) of `values`.
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// How many samples make the warm-up window of a run of `n`: the first 10 %, at least one.
pub fn warmup_len(n: usize) -> usize {
    n.div_ceil(10).max(1).min(n)
}

/// The warm-up window (first 10 %) and the closing window (last 10 %) of `series`.
pub fn windows<T>(series: &[T]) -> (&[T], &[T]) {
    let w = warmup_len(series.len());
    (&series[..w], &series[series.len() - w..])
}

/// The least-squares slope of `series` against its index (units per sample); `None`
/// with fewer than two samples.
pub fn slope(series: &[f64]) -> Option<f64> {
    let n = series.len();
    if n < 2 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = series.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in series.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    Some(sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(median(&v), Some(50.0));
        let thirty: Vec<f64> = (1..=30).rev().map(f64::from).collect();
        assert_eq!(
            percentile(&thirty, 99.0),
            Some(30.0),
            "p99 of 30 is the slowest"
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn windows_are_the_first_and_last_tenth_at_least_one() {
        let v: Vec<u32> = (0..30).collect();
        assert_eq!(windows(&v), (&v[..3], &v[27..]));
        let v: Vec<u32> = (0..31).collect();
        assert_eq!(windows(&v).0.len(), 4);
        let one = [7u32];
        assert_eq!(windows(&one), (&one[..], &one[..]));
        assert_eq!(warmup_len(0), 0);
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<f64> = (0..50).map(|i| 10.0 + 0.5 * f64::from(i)).collect();
        assert!((slope(&line).expect("slope") - 0.5).abs() < 1e-9);
        let flat = [5.0, 6.0, 5.0, 6.0, 5.0, 6.0];
        assert!(slope(&flat).expect("slope").abs() < 0.1);
        assert_eq!(slope(&[1.0]), None);
    }
}
