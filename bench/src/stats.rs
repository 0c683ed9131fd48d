//! Figures and their summaries: one measured run, and the median over runs.

use std::time::Duration;

/// One closed-loop measurement: throughput and latency percentiles.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figure {
    /// Completed requests (or operations) per second.
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Completed requests (or operations).
    pub requests: u64,
    /// Failed requests: socket errors, timeouts and non-2xx answers.
    pub errors: u64,
}

impl Figure {
    /// A figure from per-operation latencies measured over `elapsed`.
    pub fn from_latencies(mut latencies: Vec<Duration>, elapsed: Duration, errors: u64) -> Self {
        latencies.sort_unstable();
        let requests = latencies.len() as u64;
        Self {
            rps: requests as f64 / elapsed.as_secs_f64(),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            requests,
            errors,
        }
    }
}

/// The `pct` percentile of sorted `values` (nearest rank); zero when empty.
pub fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// The median of durations.
pub fn median_duration(values: impl IntoIterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(median(values.into_iter().map(|d| d.as_secs_f64())))
}

/// Several runs of one figure.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub runs: Vec<Figure>,
}

impl Series {
    pub fn push(&mut self, figure: Figure) {
        self.runs.push(figure);
    }

    pub fn rps(&self) -> f64 {
        median(self.runs.iter().map(|run| run.rps))
    }

    pub fn p50(&self) -> Duration {
        median_duration(self.runs.iter().map(|run| run.p50))
    }

    pub fn p99(&self) -> Duration {
        median_duration(self.runs.iter().map(|run| run.p99))
    }

    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|run| run.errors).sum()
    }

    /// Every run's throughput, for the report.
    pub fn rps_list(&self) -> String {
        self.runs
            .iter()
            .map(|run| format!("{:.0}", run.rps))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A scenario measured against its ceiling, run by run.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    pub achieved: Series,
    pub ceiling: Series,
}

impl Comparison {
    /// Achieved / ceiling per run, each pair measured back to back.
    pub fn ratios(&self) -> Vec<f64> {
        self.achieved
            .runs
            .iter()
            .zip(&self.ceiling.runs)
            .map(|(achieved, ceiling)| achieved.rps / ceiling.rps)
            .collect()
    }

    /// The median of the per-run ratios.
    pub fn ratio(&self) -> f64 {
        median(self.ratios())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
