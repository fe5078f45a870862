//! `make bench`: every headline figure against its native baseline, measured in the same run on
//! the same servers. These machines are noisy, so compared runs alternate and repeat, and the
//! table reports medians.

mod capture;
mod measure;
mod scenarios;

pub use scenarios::run_all;

/// One line of the result table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub ours: String,
    pub baseline: String,
    /// ours / baseline (or None where there is no baseline).
    pub ratio: Option<f64>,
    pub goal: String,
    /// Whether the goal is met; None where the figure has no goal.
    pub pass: Option<bool>,
}

/// The table as Markdown (the README's Performance section shows the latest one).
pub fn table(rows: &[Row]) -> String {
    let mut s =
        String::from("| Scenario | pg_redis | Baseline (same run) | Ratio | Goal | |\n|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.ours,
            r.baseline,
            r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into()),
            r.goal,
            match r.pass {
                Some(true) => "pass",
                Some(false) => "short",
                None => "",
            }
        ));
    }
    s
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// The q-quantile (0..1) of durations in µs.
pub fn quantile_us(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}
