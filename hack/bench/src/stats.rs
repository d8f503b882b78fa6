//! Samples per step, their summary (min, median, p90, max), the results file that several
//! runs of one runtime append to, and the tables: one runtime's, and two runtimes side by side.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Timings per step, in the order the steps were first seen.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<(String, Vec<f64>)>);

impl Samples {
    pub fn add(&mut self, step: &str, d: Duration) {
        self.add_ms(step, d.as_secs_f64() * 1000.0);
    }

    pub fn add_ms(&mut self, step: &str, ms: f64) {
        match self.0.iter_mut().find(|(s, _)| s == step) {
            Some((_, v)) => v.push(ms),
            None => self.0.push((step.to_string(), vec![ms])),
        }
    }

    pub fn merge(&mut self, other: Samples) {
        for (step, values) in other.0 {
            for v in values {
                self.add_ms(&step, v);
            }
        }
    }

    /// One row per step, in milliseconds.
    pub fn rows(self, section: &str) -> Vec<Row> {
        self.0
            .into_iter()
            .map(|(name, values)| Row { section: section.to_string(), name, unit: "ms".into(), values })
            .collect()
    }
}

/// Nearest-rank percentile of unsorted values (`p` in 0..=1).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (p * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// A step's timings (unit `ms`, one value per sample) or a single measurement (MiB, s, count).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub unit: String,
    pub values: Vec<f64>,
}

impl Row {
    pub fn single(section: &str, name: &str, unit: &str, value: f64) -> Row {
        Row { section: section.into(), name: name.into(), unit: unit.into(), values: vec![value] }
    }

    /// The figure compared across runtimes: the median (of one value, that value).
    pub fn median(&self) -> f64 {
        percentile(&self.values, 0.5)
    }

    fn is_timing(&self) -> bool {
        self.unit == "ms"
    }
}

/// Everything measured for one runtime; runs append to the same file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub label: String,
    pub rows: Vec<Row>,
    /// Free text: what was left behind, and anything else worth reading next to the table.
    pub notes: Vec<String>,
}

impl Results {
    pub fn load_or_new(path: &Path, label: &str) -> Result<Results> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Results { label: label.into(), ..Default::default() })
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }
}

/// One runtime's rows: min, median, p90, max for timings, the value for the rest.
pub fn print_rows(label: &str, rows: &[Row]) {
    println!("{:<44} {:>5} {:>9} {:>9} {:>9} {:>9}", format!("[{label}]"), "n", "min", "median", "p90", "max");
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = &r.section;
            println!("{section}");
        }
        if r.is_timing() {
            let v = &r.values;
            println!(
                "  {:<42} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                r.name,
                v.len(),
                percentile(v, 0.0),
                percentile(v, 0.5),
                percentile(v, 0.9),
                percentile(v, 1.0)
            );
        } else {
            println!(
                "  {:<42} {:>5} {:>9} {:>9} {:>9} {:>9}  {}",
                r.name,
                r.values.len(),
                "",
                num(r.median()),
                "",
                "",
                r.unit
            );
        }
    }
}

/// Two runtimes side by side: medians (and p90 for timings) and the ratio a/b of medians.
pub fn print_comparison(a: &Results, b: &Results) {
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "",
        "unit",
        format!("{} med", short(&a.label)),
        "p90",
        format!("{} med", short(&b.label)),
        "p90",
        "ratio"
    );
    let mut names: Vec<(&str, &str)> = a.rows.iter().map(|r| (r.section.as_str(), r.name.as_str())).collect();
    for r in &b.rows {
        if !names.contains(&(r.section.as_str(), r.name.as_str())) {
            names.push((&r.section, &r.name));
        }
    }
    // Keep sections together in first-seen order.
    let mut sections: Vec<&str> = Vec::new();
    for (s, _) in &names {
        if !sections.contains(s) {
            sections.push(s);
        }
    }
    let find = |res: &'_ Results, s: &str, n: &str| res.rows.iter().find(|r| r.section == s && r.name == n).cloned();
    let fmt = |v: Option<f64>| v.filter(|x| x.is_finite()).map(num).unwrap_or_else(|| "-".into());
    for section in sections {
        println!("{section}");
        for (s, n) in names.iter().filter(|(s, _)| *s == section) {
            let (ra, rb) = (find(a, s, n), find(b, s, n));
            let unit = ra.as_ref().or(rb.as_ref()).map(|r| r.unit.clone()).unwrap_or_default();
            let timing = unit == "ms";
            let p90 = |r: &Option<Row>| {
                if timing {
                    fmt(r.as_ref().map(|r| percentile(&r.values, 0.9)))
                } else {
                    String::new()
                }
            };
            let (ma, mb) = (ra.as_ref().map(Row::median), rb.as_ref().map(Row::median));
            let ratio = match (ma, mb) {
                (Some(x), Some(y)) if y > 0.0 && x.is_finite() && y.is_finite() && unit != "count" => {
                    format!("{:.3}", x / y)
                }
                _ => "-".into(),
            };
            println!(
                "  {:<42} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}",
                n,
                unit,
                fmt(ma),
                p90(&ra),
                fmt(mb),
                p90(&rb),
                ratio
            );
        }
    }
    for res in [a, b] {
        if !res.notes.is_empty() {
            println!("notes ({}):", res.label);
            for n in &res.notes {
                println!("  {n}");
            }
        }
    }
}

/// One decimal, two below 10 (seconds, small MiB figures).
fn num(x: f64) -> String {
    if x.abs() < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

fn short(label: &str) -> String {
    label.chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn samples_keep_first_seen_order_and_merge() {
        let mut a = Samples::default();
        a.add_ms("b", 1.0);
        a.add_ms("a", 2.0);
        let mut other = Samples::default();
        other.add_ms("a", 3.0);
        other.add_ms("c", 4.0);
        a.merge(other);
        let rows = a.rows("s");
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(rows[1].values, [2.0, 3.0]);
    }
}
