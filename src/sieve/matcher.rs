//! Match types and comparators (RFC 5228 section 2.7, RFC 4790, RFC 5231):
//! `:is`, `:contains`, `:matches` (glob with `*`, `?` and `\` escapes) and
//! the relational `:value`/`:count` operators, under `i;octet`,
//! `i;ascii-casemap` and `i;ascii-numeric`.
//!
//! `:matches` is non-greedy from the left (RFC 5229 section 3.2: each
//! wildcard takes as little as it can) and reports what each wildcard
//! matched, for the match variables. `i;ascii-casemap` orders strings by
//! their lower-case form, as Pigeonhole does: `[` sorts before `b`. Its backtracking is bounded: failed
//! states are remembered and every step is charged to the caller's budget.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::compile::{Comparator, Rel};

/// The work budget ran out during a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfSteps;

fn fold(cmp: Comparator, c: char) -> char {
    match cmp {
        Comparator::Casemap => c.to_ascii_lowercase(),
        _ => c,
    }
}

fn fold_str(cmp: Comparator, s: &str) -> String {
    s.chars().map(|c| fold(cmp, c)).collect()
}

/// Leading decimal digits without leading zeros, or `None` for "positive
/// infinity" (RFC 4790 section 9.1: a string not starting with a digit).
fn numeric_key(s: &str) -> Option<&str> {
    let end = s.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let d = &s[..end];
    let trimmed = d.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed })
}

/// Orders two strings under a comparator.
pub fn order(cmp: Comparator, a: &str, b: &str) -> Ordering {
    match cmp {
        Comparator::Octet => a.as_bytes().cmp(b.as_bytes()),
        Comparator::Casemap => fold_str(cmp, a).cmp(&fold_str(cmp, b)),
        Comparator::Numeric => match (numeric_key(a), numeric_key(b)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
        },
    }
}

pub fn relate(rel: Rel, o: Ordering) -> bool {
    match rel {
        Rel::Gt => o == Ordering::Greater,
        Rel::Ge => o != Ordering::Less,
        Rel::Lt => o == Ordering::Less,
        Rel::Le => o != Ordering::Greater,
        Rel::Eq => o == Ordering::Equal,
        Rel::Ne => o != Ordering::Equal,
    }
}

pub fn is(cmp: Comparator, value: &str, key: &str) -> bool {
    order(cmp, value, key) == Ordering::Equal
}

pub fn contains(cmp: Comparator, value: &str, key: &str) -> bool {
    match cmp {
        Comparator::Octet => value.contains(key),
        _ => fold_str(cmp, value).contains(&fold_str(cmp, key)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P {
    Lit(char),
    One,
    Star,
}

fn pattern(key: &str, cmp: Comparator) -> Vec<P> {
    let mut out = Vec::new();
    let mut it = key.chars();
    while let Some(c) = it.next() {
        match c {
            '*' => {
                out.push(P::Star);
            }
            '?' => out.push(P::One),
            '\\' => {
                if let Some(n) = it.next() {
                    out.push(P::Lit(fold(cmp, n)));
                }
            }
            c => out.push(P::Lit(fold(cmp, c))),
        }
    }
    out
}

struct Frame {
    pi: usize,
    ti: usize,
    k: usize,
    path_len: usize,
}

/// Glob match. On success returns the text each wildcard matched, in order.
pub fn matches(cmp: Comparator, value: &str, key: &str, budget: &mut u64) -> Result<Option<Vec<String>>, OutOfSteps> {
    let p = pattern(key, cmp);
    let orig: Vec<char> = value.chars().collect();
    let t: Vec<char> = orig.iter().map(|c| fold(cmp, *c)).collect();
    let mut failed: HashSet<(usize, usize)> = HashSet::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<(usize, usize)> = Vec::new();
    let (mut pi, mut ti) = (0usize, 0usize);
    loop {
        if *budget == 0 {
            return Err(OutOfSteps);
        }
        *budget -= 1;
        let ok = match p.get(pi) {
            None => {
                if ti == t.len() {
                    let caps = path.iter().map(|&(s, l)| orig[s..s + l].iter().collect()).collect();
                    return Ok(Some(caps));
                }
                false
            }
            Some(P::Lit(c)) => {
                if t.get(ti) == Some(c) {
                    pi += 1;
                    ti += 1;
                    true
                } else {
                    false
                }
            }
            Some(P::One) => {
                if ti < t.len() {
                    path.push((ti, 1));
                    pi += 1;
                    ti += 1;
                    true
                } else {
                    false
                }
            }
            Some(P::Star) => {
                if failed.contains(&(pi, ti)) {
                    false
                } else {
                    stack.push(Frame { pi, ti, k: 0, path_len: path.len() });
                    path.push((ti, 0));
                    pi += 1;
                    true
                }
            }
        };
        if ok {
            continue;
        }
        // Backtrack: let the innermost star take one more character.
        loop {
            let Some(f) = stack.last_mut() else {
                return Ok(None);
            };
            if f.ti + f.k < t.len() {
                f.k += 1;
                path.truncate(f.path_len);
                path.push((f.ti, f.k));
                pi = f.pi + 1;
                ti = f.ti + f.k;
                break;
            }
            failed.insert((f.pi, f.ti));
            stack.pop();
        }
    }
}

/// Escapes the wildcard characters of a string (`:quotewildcard`).
pub fn quote_wildcard(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
