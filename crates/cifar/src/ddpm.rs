//! The DDPM noise schedule of Ho et al. (2020): T = 1000 steps, beta linear from
//! 1e-4 to 0.02, `alpha_bar_t = prod_{s=1..t} (1 - beta_s)` with 1-based t.

/// Number of steps of the standard schedule.
pub const NUM_STEPS: usize = 1000;
/// First beta of the standard schedule.
pub const BETA_START: f64 = 1e-4;
/// Last beta of the standard schedule.
pub const BETA_END: f64 = 0.02;

/// A discrete variance-preserving noise schedule, indexed by 1-based t.
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl Default for DdpmSchedule {
    /// The standard linear schedule: 1000 steps, beta from 1e-4 to 0.02.
    fn default() -> Self {
        Self::linear(NUM_STEPS, BETA_START, BETA_END)
    }
}

impl DdpmSchedule {
    /// Linear betas `beta_s = start + (end - start) (s - 1) / (T - 1)`, s = 1..=T
    /// (numpy/torch `linspace(start, end, T)`), in f64.
    pub fn linear(num_steps: usize, beta_start: f64, beta_end: f64) -> Self {
        assert!(num_steps >= 1, "a schedule needs at least one step");
        let betas: Vec<f64> = (0..num_steps)
            .map(|i| {
                if num_steps == 1 {
                    beta_start
                } else {
                    beta_start + (beta_end - beta_start) * i as f64 / (num_steps - 1) as f64
                }
            })
            .collect();
        let mut prod = 1.0;
        let alpha_bars = betas
            .iter()
            .map(|b| {
                prod *= 1.0 - b;
                prod
            })
            .collect();
        Self { betas, alpha_bars }
    }

    /// Number of steps T.
    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// beta_t for 1-based t in 1..=T.
    pub fn beta(&self, t: usize) -> f64 {
        self.check(t);
        self.betas[t - 1]
    }

    /// alpha_bar_t = prod_{s=1..t} (1 - beta_s) for 1-based t in 1..=T.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.check(t);
        self.alpha_bars[t - 1]
    }

    /// All alpha_bar_t, t = 1..=T (index t - 1).
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }

    fn check(&self, t: usize) {
        assert!(
            (1..=self.num_steps()).contains(&t),
            "noise level t = {t} is outside 1..={} (t is 1-based)",
            self.num_steps()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_schedule_values() {
        let s = DdpmSchedule::default();
        assert_eq!(s.num_steps(), 1000);
        assert!((s.beta(1) - 1e-4).abs() < 1e-15);
        assert!((s.beta(1000) - 0.02).abs() < 1e-15);
        assert!((s.alpha_bar(1) - (1.0 - 1e-4)).abs() < 1e-15);
        // Well-known values of the linear schedule.
        assert!(
            (s.alpha_bar(1000) - 4.035e-5).abs() < 1e-7,
            "{}",
            s.alpha_bar(1000)
        );
        let direct: f64 = (1..=10).map(|t| 1.0 - s.beta(t)).product();
        assert!((s.alpha_bar(10) - direct).abs() < 1e-15);
        assert!(s.alpha_bars().windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    #[should_panic(expected = "1-based")]
    fn t_zero_is_rejected() {
        let _ = DdpmSchedule::default().alpha_bar(0);
    }
}
