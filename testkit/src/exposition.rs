//! A checker for the Prometheus text exposition format (version 0.0.4), for tests:
//! [`check`] reads `/metrics` text the way a scraper does and refuses what a scraper
//! would (untyped samples, families split apart, repeated series, bad names, bad
//! escapes, bad values), returning the samples it read.
//!
//! Test-only code: the integration tests and the scheduler's and the agent's unit tests
//! check `/metrics` with it. Its name rules are its own, not the writer's: a checker
//! that borrowed them would check nothing.

use std::collections::{BTreeMap, BTreeSet};

/// Checks text against the exposition format, line by line, the way a scraper reads
/// it: every sample belongs to a family whose TYPE came before it (a histogram's
/// `_bucket`/`_sum`/`_count` to its base name), families are declared once and their
/// samples are contiguous, names and label names are valid, label values are properly
/// quoted and escaped, values parse, and no series appears twice. Returns the
/// samples read, by metric name, or the first bad line.
pub fn check(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut closed: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, tail) = (parts.next(), parts.next(), parts.next());
            match (keyword, name) {
                (Some("HELP"), Some(name)) => {
                    if !valid_name(name) || !helps.insert(name.to_string()) {
                        return Err(bad("bad or repeated HELP"));
                    }
                    if !help_escapes_ok(tail.unwrap_or_default()) {
                        return Err(bad("bad escape in HELP"));
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = tail.unwrap_or_default();
                    if !valid_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                    {
                        return Err(bad("bad TYPE"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(bad("TYPE repeated"));
                    }
                    if let Some(previous) = current.replace(name.to_string()) {
                        closed.insert(previous);
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|why| bad(&why))?;
        let family = family_of(&sample.name, &types).ok_or_else(|| bad("sample without a TYPE before it"))?;
        if closed.contains(&family) || current.as_deref() != Some(family.as_str()) {
            return Err(bad("sample apart from the rest of its family"));
        }
        let key = format!("{}{:?}", sample.name, sample.labels);
        if !series.insert(key) {
            return Err(bad("series repeated"));
        }
        samples.push(sample);
    }
    Ok(samples)
}

/// One sample read back by [`check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Label pairs, unescaped, in the order written.
    pub labels: Vec<(String, String)>,
    /// The sample's value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Help text may escape only `\\` and newlines.
fn help_escapes_ok(help: &str) -> bool {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return false;
        }
    }
    true
}

fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        types.get(base).filter(|k| *k == "histogram" || *k == "summary").map(|_| base.to_string())
    })
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).ok_or("unclosed labels")?;
            if after[start..].starts_with('}') {
                rest = &after[start + 1..];
                break;
            }
            let eq = after[start..].find("=\"").ok_or("label without =\"")? + start;
            let key = &after[start..eq];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.next_if(|(i, _)| *i < eq + 2).is_some() {}
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")? {
                    (_, '\\') => match chars.next().ok_or("dangling backslash")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("bad escape \\{other} in a label value")),
                    },
                    (_, '"') => break,
                    (_, '\n') => return Err("raw newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            }
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label {key} repeated"));
            }
            labels.push((key.to_string(), value));
            match chars.next().ok_or("unclosed labels")? {
                (_, ',') => {}
                (i, '}') => {
                    rest = &after[i + 1..];
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label value")),
            }
        }
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = match fields.next().ok_or("no value")? {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// `^[a-zA-Z_:][a-zA-Z0-9_:]*$`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$`
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_catches_what_a_scraper_would_refuse() {
        let ok = "# HELP a_b A.\n# TYPE a_b gauge\na_b{x=\"q\\\"\\\\\\n\"} 1\n";
        assert_eq!(check(ok).unwrap()[0].label("x"), Some("q\"\\\n"));
        for bad in [
            "a 1\n",                                  // no TYPE
            "# TYPE a gauge\na{x=\"1\"} 1",           // no final newline
            "# TYPE 1a gauge\n1a 1\n",                // bad name
            "# TYPE a gauge\na{x=\"\\q\"} 1\n",       // bad escape
            "# TYPE a gauge\na{x=\"1} 1\n",           // unterminated
            "# TYPE a gauge\na{x=1} 1\n",             // unquoted
            "# TYPE a gauge\na one\n",                // bad value
            "# TYPE a gauge\na 1\na 2\n",             // repeated series
            "# TYPE a gauge\n# TYPE b gauge\na 1\n",  // apart from its family
            "# TYPE a gauge\n# TYPE a gauge\na 1\n",  // TYPE twice
            "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n", // label twice
            "# TYPE a gauge\na_bucket{le=\"1\"} 1\n", // a gauge has no buckets
        ] {
            assert!(check(bad).is_err(), "accepted {bad:?}");
        }
    }
}
