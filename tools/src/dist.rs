//! Weighted value distributions given on the command line.
//!
//! `--size 1024` is a fixed value; `--size 1k:80,100k:20` picks 1 KiB for
//! 80 % of messages and 100 KiB for 20 %. Suffixes `k`, `m` (and `KiB`,
//! `MiB`) are powers of 1024. Weights are relative, not necessarily
//! summing to 100.

use crate::rng::Rng;

/// A parsed distribution: values with their relative weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Dist {
    entries: Vec<(u64, u64)>,
    weight_total: u64,
}

/// Upper bound on the number of entries, so a typo cannot build a huge table.
pub const DIST_ENTRIES_MAX: usize = 64;

impl Dist {
    pub fn fixed(value: u64) -> Dist {
        Dist {
            entries: vec![(value, 1)],
            weight_total: 1,
        }
    }

    pub fn parse(text: &str) -> Result<Dist, String> {
        let mut entries = Vec::new();
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty entry in {text:?}"));
            }
            let (value, weight) = match item.split_once(':') {
                Some((v, w)) => {
                    let w: u64 = w.trim().parse().map_err(|_| format!("bad weight {w:?}"))?;
                    (parse_quantity(v)?, w)
                }
                None => (parse_quantity(item)?, 1),
            };
            entries.push((value, weight));
        }
        if entries.len() > DIST_ENTRIES_MAX {
            return Err(format!("more than {DIST_ENTRIES_MAX} entries"));
        }
        let weight_total: u64 = entries.iter().map(|e| e.1).sum();
        if weight_total == 0 {
            return Err("all weights are zero".into());
        }
        Ok(Dist {
            entries,
            weight_total,
        })
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        if self.entries.len() == 1 {
            return self.entries[0].0;
        }
        let mut pick = rng.below(self.weight_total);
        for &(value, weight) in &self.entries {
            if pick < weight {
                return value;
            }
            pick -= weight;
        }
        unreachable!("pick < weight_total")
    }

    pub fn max(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.1 > 0)
            .map(|e| e.0)
            .max()
            .unwrap_or(0)
    }

    pub fn min(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.1 > 0)
            .map(|e| e.0)
            .min()
            .unwrap_or(0)
    }
}

impl std::str::FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Dist, String> {
        Dist::parse(s)
    }
}

/// Parses `1024`, `1k`, `4KiB`, `2m`, `1g` into a count of units.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, multiplier) = if let Some(d) = strip_any(&lower, &["kib", "kb", "k"]) {
        (d, 1u64 << 10)
    } else if let Some(d) = strip_any(&lower, &["mib", "mb", "m"]) {
        (d, 1u64 << 20)
    } else if let Some(d) = strip_any(&lower, &["gib", "gb", "g"]) {
        (d, 1u64 << 30)
    } else {
        (lower.as_str(), 1)
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("bad number {text:?}"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn strip_any<'a>(s: &'a str, suffixes: &[&str]) -> Option<&'a str> {
    suffixes.iter().find_map(|suf| s.strip_suffix(suf))
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = text.trim();
    let num = |d: &str| -> Result<f64, String> {
        d.trim()
            .parse::<f64>()
            .map_err(|_| format!("bad duration {text:?}"))
    };
    let secs = if let Some(d) = t.strip_suffix("ms") {
        num(d)? / 1000.0
    } else if let Some(d) = t.strip_suffix('s') {
        num(d)?
    } else if let Some(d) = t.strip_suffix('m') {
        num(d)? * 60.0
    } else if let Some(d) = t.strip_suffix('h') {
        num(d)? * 3600.0
    } else {
        num(t)?
    };
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1024").unwrap(), 1024);
        assert_eq!(parse_quantity("1k").unwrap(), 1024);
        assert_eq!(parse_quantity("4KiB").unwrap(), 4096);
        assert_eq!(parse_quantity("2m").unwrap(), 2 << 20);
        assert!(parse_quantity("x").is_err());
    }

    #[test]
    fn weighted() {
        let d = Dist::parse("1k:80,100k:20").unwrap();
        let mut rng = Rng::new(3);
        let big = (0..10_000).filter(|_| d.sample(&mut rng) == 100 << 10).count();
        assert!((1_700..2_300).contains(&big), "{big}");
        assert_eq!(d.max(), 100 << 10);
        assert_eq!(Dist::parse("5").unwrap(), Dist::fixed(5));
        assert!(Dist::parse("1:0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("3").unwrap().as_secs(), 3);
    }
}
