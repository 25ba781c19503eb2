//! Reference configurations: what a VM's measured parameters must be (docs/CONFIG.md,
//! "Reference configurations"). A reference is TOML with exact values (`[expect]`), inclusive
//! numeric ranges (`[range]`), allowed sets (`[set]`) and forbidden parameters (`[absent]`);
//! `strict = true` also refuses every measured parameter the reference does not name.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use crate::class::{Classify, ErrorClass};

use super::{ConfigParam, MAX_VALUE_LEN, is_valid_param_name, shown};

/// Largest reference file, in bytes.
pub const MAX_REFERENCE_LEN: usize = 256 * 1024;
/// What [`Mismatch::found`] says of a parameter that was not measured, and
/// [`Mismatch::expected`] of one that must not be present.
pub const ABSENT: &str = "absent";
/// What [`Mismatch::expected`] says of a parameter the reference does not name, in strict mode.
pub const UNEXPECTED: &str = "unexpected";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("reference config: expected at most {max} bytes, found {found}")]
    TooLarge { max: usize, found: usize },
    /// Malformed TOML, an unknown key or a value of the wrong type; `line` is 1-based (0 when
    /// the parser gave no position).
    #[error("reference config, line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// A rule that parses but cannot hold: `field` is like `[range] vcpus`.
    #[error("reference config {field}: expected {expected}, found {found}")]
    Field {
        field: String,
        expected: String,
        found: String,
    },
}

/// A reference is the caller's input; a configuration that does not meet it is reported as
/// mismatches, not as an error.
impl Classify for ReferenceError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

fn field_error(
    field: impl Into<String>,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> ReferenceError {
    ReferenceError::Field {
        field: field.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

/// One parameter that does not meet its rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mismatch {
    pub name: String,
    /// What the reference allows: `= 1024`, `1 to 4`, `one of [q35, pc]`, `absent`, or
    /// `unexpected` (strict mode, a parameter the reference does not name).
    pub expected: String,
    /// The measured value, or `absent`.
    pub found: String,
}

/// The rule for one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Exactly this value.
    Equals(String),
    /// A decimal integer in `min..=max`.
    Range(u64, u64),
    /// One of these values (in file order).
    OneOf(Vec<String>),
    /// Not present.
    Absent,
}

impl Rule {
    /// How a mismatch names what the rule allows.
    pub fn describe(&self) -> String {
        match self {
            Rule::Equals(v) => format!("= {v}"),
            Rule::Range(min, max) => format!("{min} to {max}"),
            Rule::OneOf(vs) => format!("one of [{}]", vs.join(", ")),
            Rule::Absent => ABSENT.to_owned(),
        }
    }

    /// Whether `value` (None: not measured) meets the rule.
    pub fn allows(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Rule::Absent, v) => v.is_none(),
            (_, None) => false,
            (Rule::Equals(e), Some(v)) => e == v,
            (Rule::Range(min, max), Some(v)) => {
                decimal(v).is_some_and(|n| (*min..=*max).contains(&n))
            }
            (Rule::OneOf(vs), Some(v)) => vs.iter().any(|e| e == v),
        }
    }
}

/// A decimal integer: ASCII digits only, fitting in u64.
fn decimal(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A parsed reference configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    strict: bool,
    rules: BTreeMap<String, Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReference {
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    expect: BTreeMap<String, toml::Value>,
    #[serde(default)]
    range: BTreeMap<String, toml::Value>,
    #[serde(default)]
    set: BTreeMap<String, toml::Value>,
    absent: Option<RawAbsent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbsent {
    names: Vec<String>,
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// A string or an integer (as its decimal string).
fn scalar(field: &str, v: &toml::Value) -> Result<String, ReferenceError> {
    let s = match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        other => {
            return Err(field_error(
                field,
                "a string or an integer",
                type_name(other),
            ));
        }
    };
    if s.len() > MAX_VALUE_LEN {
        return Err(field_error(
            field,
            format!("a value of at most {MAX_VALUE_LEN} bytes"),
            format!("{} bytes", s.len()),
        ));
    }
    Ok(s)
}

fn bound(field: &str, which: &str, v: &toml::Value) -> Result<u64, ReferenceError> {
    let found = match v {
        toml::Value::Integer(i) => match u64::try_from(*i) {
            Ok(n) => return Ok(n),
            Err(_) => i.to_string(),
        },
        toml::Value::String(s) => match decimal(s) {
            Some(n) => return Ok(n),
            None => format!("{s:?}"),
        },
        other => type_name(other).to_owned(),
    };
    Err(field_error(
        field,
        format!("a non-negative integer {which} bound"),
        found,
    ))
}

fn range_rule(field: &str, v: &toml::Value) -> Result<Rule, ReferenceError> {
    let toml::Value::Array(items) = v else {
        return Err(field_error(field, "[min, max]", type_name(v)));
    };
    let [lo, hi] = items.as_slice() else {
        return Err(field_error(
            field,
            "[min, max]",
            format!("an array of {} values", items.len()),
        ));
    };
    let (min, max) = (bound(field, "lower", lo)?, bound(field, "upper", hi)?);
    if min > max {
        return Err(field_error(field, "min <= max", format!("[{min}, {max}]")));
    }
    Ok(Rule::Range(min, max))
}

fn set_rule(field: &str, v: &toml::Value) -> Result<Rule, ReferenceError> {
    let toml::Value::Array(items) = v else {
        return Err(field_error(
            field,
            "an array of allowed values",
            type_name(v),
        ));
    };
    if items.is_empty() {
        return Err(field_error(
            field,
            "at least one allowed value",
            "an empty array",
        ));
    }
    let mut values = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let s = scalar(&format!("{field}[{i}]"), item)?;
        if values.contains(&s) {
            return Err(field_error(
                field,
                "each allowed value once",
                format!("{s:?} twice"),
            ));
        }
        values.push(s);
    }
    Ok(Rule::OneOf(values))
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(at)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Reference {
    /// Parses and checks a reference, refusing input over [`MAX_REFERENCE_LEN`], unknown keys,
    /// invalid parameter names, a name under two rules, ranges with min above max, empty sets
    /// and values that are not strings or integers. Errors name the section and parameter.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if text.len() > MAX_REFERENCE_LEN {
            return Err(ReferenceError::TooLarge {
                max: MAX_REFERENCE_LEN,
                found: text.len(),
            });
        }
        let raw: RawReference = toml::from_str(text).map_err(|e| ReferenceError::Syntax {
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let mut rules: BTreeMap<String, Rule> = BTreeMap::new();
        let mut sections: HashMap<String, &'static str> = HashMap::new();
        let mut add = |section: &'static str, name: &str, rule: Rule| {
            let field = format!("[{section}] {}", shown(name));
            if !is_valid_param_name(name) {
                return Err(field_error(
                    field,
                    "a parameter name of 1 to 128 characters of [a-z0-9._-]",
                    format!("{:?}", shown(name)),
                ));
            }
            if let Some(first) = sections.insert(name.to_owned(), section) {
                let found = if first == section {
                    format!("{name} listed twice in [{section}]")
                } else {
                    format!("{name} in [{first}] and in [{section}]")
                };
                return Err(field_error(field, "one rule per parameter", found));
            }
            rules.insert(name.to_owned(), rule);
            Ok(())
        };
        for (name, v) in &raw.expect {
            let rule = Rule::Equals(scalar(&format!("[expect] {}", shown(name)), v)?);
            add("expect", name, rule)?;
        }
        for (name, v) in &raw.range {
            add(
                "range",
                name,
                range_rule(&format!("[range] {}", shown(name)), v)?,
            )?;
        }
        for (name, v) in &raw.set {
            add("set", name, set_rule(&format!("[set] {}", shown(name)), v)?)?;
        }
        for name in raw.absent.iter().flat_map(|a| &a.names) {
            add("absent", name, Rule::Absent)?;
        }
        Ok(Reference {
            strict: raw.strict,
            rules,
        })
    }

    /// Whether a measured parameter the reference does not name is a mismatch.
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Every parameter's rule, by name.
    pub fn rules(&self) -> &BTreeMap<String, Rule> {
        &self.rules
    }

    /// Every parameter that breaks its rule (and, in strict mode, every parameter the reference
    /// does not name), sorted by name. Empty means the configuration meets the reference. If
    /// `params` repeats a name, the first value counts.
    pub fn check(&self, params: &[ConfigParam]) -> Vec<Mismatch> {
        let mut measured: BTreeMap<&str, &str> = BTreeMap::new();
        for p in params {
            measured.entry(p.name.as_str()).or_insert(p.value.as_str());
        }
        let mut out = Vec::new();
        for (name, rule) in &self.rules {
            let value = measured.get(name.as_str()).copied();
            if !rule.allows(value) {
                out.push(Mismatch {
                    name: name.clone(),
                    expected: rule.describe(),
                    found: value.unwrap_or(ABSENT).to_owned(),
                });
            }
        }
        if self.strict {
            let named: BTreeSet<&str> = self.rules.keys().map(String::as_str).collect();
            for (name, value) in &measured {
                if !named.contains(name) {
                    out.push(Mismatch {
                        name: (*name).to_owned(),
                        expected: UNEXPECTED.to_owned(),
                        found: (*value).to_owned(),
                    });
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Vec<ConfigParam> {
        list.iter().map(|(n, v)| ConfigParam::new(*n, *v)).collect()
    }

    const REF: &str = r#"
strict = false
[expect]
memory_mib = 1024
"kernel.sha256" = "ab12"
[range]
vcpus = [1, 4]
[set]
machine = ["q35", "pc"]
[absent]
names = ["firmware.sha256"]
"#;

    fn good() -> Vec<ConfigParam> {
        params(&[
            ("memory_mib", "1024"),
            ("kernel.sha256", "ab12"),
            ("vcpus", "2"),
            ("machine", "q35"),
            ("cmdline", "console=ttyS0"),
        ])
    }

    fn with(name: &str, value: Option<&str>) -> Vec<ConfigParam> {
        let mut p: Vec<ConfigParam> = good().into_iter().filter(|p| p.name != name).collect();
        if let Some(v) = value {
            p.push(ConfigParam::new(name, v));
        }
        p
    }

    fn one(m: &[Mismatch]) -> (&str, &str, &str) {
        assert_eq!(m.len(), 1, "{m:?}");
        (&m[0].name, &m[0].expected, &m[0].found)
    }

    #[test]
    fn a_matching_config_has_no_mismatch() {
        let r = Reference::parse(REF).unwrap();
        assert!(!r.strict());
        assert_eq!(r.rules().len(), 5);
        assert_eq!(r.check(&good()), vec![]);
    }

    #[test]
    fn expect_compares_exact_strings() {
        let r = Reference::parse(REF).unwrap();
        assert_eq!(
            one(&r.check(&with("memory_mib", Some("2048")))),
            ("memory_mib", "= 1024", "2048")
        );
        // Integers are compared as decimal strings: no numeric equivalence.
        assert_eq!(
            one(&r.check(&with("memory_mib", Some("01024")))),
            ("memory_mib", "= 1024", "01024")
        );
        assert_eq!(
            one(&r.check(&with("kernel.sha256", None))),
            ("kernel.sha256", "= ab12", "absent")
        );
    }

    #[test]
    fn range_is_inclusive_and_numeric() {
        let r = Reference::parse(REF).unwrap();
        for ok in ["1", "4", "3"] {
            assert_eq!(r.check(&with("vcpus", Some(ok))), vec![], "{ok}");
        }
        for bad in ["0", "5", "18446744073709551616"] {
            assert_eq!(
                one(&r.check(&with("vcpus", Some(bad)))),
                ("vcpus", "1 to 4", bad)
            );
        }
        for not_int in ["two", "-1", "+2", "", "2.0", " 2"] {
            assert_eq!(
                one(&r.check(&with("vcpus", Some(not_int)))),
                ("vcpus", "1 to 4", not_int)
            );
        }
        assert_eq!(
            one(&r.check(&with("vcpus", None))),
            ("vcpus", "1 to 4", "absent")
        );
    }

    #[test]
    fn set_allows_listed_values_only() {
        let r = Reference::parse(REF).unwrap();
        assert_eq!(r.check(&with("machine", Some("pc"))), vec![]);
        assert_eq!(
            one(&r.check(&with("machine", Some("virt")))),
            ("machine", "one of [q35, pc]", "virt")
        );
        assert_eq!(
            one(&r.check(&with("machine", None))),
            ("machine", "one of [q35, pc]", "absent")
        );
        let r = Reference::parse("[set]\nmemory_mib = [512, \"1024\"]\n").unwrap();
        assert_eq!(r.check(&params(&[("memory_mib", "512")])), vec![]);
        assert_eq!(r.check(&params(&[("memory_mib", "1024")])), vec![]);
    }

    #[test]
    fn absent_refuses_a_present_param() {
        let r = Reference::parse(REF).unwrap();
        assert_eq!(
            one(&r.check(&with("firmware.sha256", Some("cd34")))),
            ("firmware.sha256", "absent", "cd34")
        );
    }

    #[test]
    fn strict_refuses_unnamed_params_and_sorts_by_name() {
        let r = Reference::parse(&REF.replace("strict = false", "strict = true")).unwrap();
        assert!(r.strict());
        assert_eq!(
            one(&r.check(&good())),
            ("cmdline", "unexpected", "console=ttyS0")
        );
        let mut p = with("vcpus", Some("9"));
        p.retain(|p| p.name != "machine");
        p.push(ConfigParam::new("firmware.sha256", "ff"));
        let m = r.check(&p);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["cmdline", "firmware.sha256", "machine", "vcpus"],
            "{m:?}"
        );
        assert_eq!(m[1].expected, "absent");
        assert_eq!(m[2].found, "absent");
        // Not strict: unnamed params pass.
        let r = Reference::parse("").unwrap();
        assert_eq!(r.check(&good()), vec![]);
    }

    /// The line of a reference that does not parse as TOML of the expected shape.
    fn syntax_line(text: &str) -> usize {
        match Reference::parse(text) {
            Err(ReferenceError::Syntax { line, .. }) => line,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    /// The field, expectation and finding of a rule that parses but cannot hold.
    fn field_err(text: &str) -> (String, String, String) {
        match Reference::parse(text) {
            Err(ReferenceError::Field {
                field,
                expected,
                found,
            }) => (field, expected, found),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn parse_errors_name_the_field() {
        assert_eq!(syntax_line("strict = false\nstrikt = true\n"), 2);
        assert_eq!(
            syntax_line("[expect]\nvcpus = 1\n[sets]\nmachine = [\"pc\"]\n"),
            3
        );
        assert_eq!(syntax_line("[absent]\nnames = []\nnamez = []\n"), 3);
        assert_eq!(syntax_line("strict = \"yes\"\n"), 1);
        assert_eq!(syntax_line("[expect\n"), 1);

        let cases: [(&str, &str, Option<&str>, Option<&str>); 13] = [
            (
                "[expect]\nvcpus = 2\n[range]\nvcpus = [1, 4]\n",
                "[range] vcpus",
                None,
                Some("vcpus in [expect] and in [range]"),
            ),
            (
                "[set]\nmachine = [\"pc\"]\n[absent]\nnames = [\"machine\"]\n",
                "[absent] machine",
                None,
                Some("machine in [set] and in [absent]"),
            ),
            (
                "[absent]\nnames = [\"a\", \"a\"]\n",
                "[absent] a",
                None,
                Some("a listed twice in [absent]"),
            ),
            (
                "[range]\nvcpus = [4, 1]\n",
                "[range] vcpus",
                Some("min <= max"),
                Some("[4, 1]"),
            ),
            (
                "[range]\nvcpus = [-1, 4]\n",
                "[range] vcpus",
                None,
                Some("-1"),
            ),
            (
                "[range]\nvcpus = [1]\n",
                "[range] vcpus",
                Some("[min, max]"),
                None,
            ),
            (
                "[range]\nvcpus = 3\n",
                "[range] vcpus",
                Some("[min, max]"),
                None,
            ),
            ("[expect]\n\"Memory\" = 1\n", "[expect] Memory", None, None),
            (
                "[expect]\nmemory_mib = 1.5\n",
                "[expect] memory_mib",
                None,
                Some("a float"),
            ),
            (
                "[set]\nmachine = []\n",
                "[set] machine",
                Some("at least one allowed value"),
                None,
            ),
            (
                "[set]\nmachine = [\"pc\", true]\n",
                "[set] machine[1]",
                None,
                None,
            ),
            (
                "[set]\nmachine = [\"pc\", \"pc\"]\n",
                "[set] machine",
                Some("each allowed value once"),
                None,
            ),
            (
                "[range]\nmemory_mib = [\"x\", 4]\n",
                "[range] memory_mib",
                Some("a non-negative integer lower bound"),
                Some("\"x\""),
            ),
        ];
        for (text, field, expected, found) in cases {
            let (f, e, x) = field_err(text);
            assert_eq!(f, field, "{text:?}");
            if let Some(expected) = expected {
                assert_eq!(e, expected, "{text:?}");
            }
            if let Some(found) = found {
                assert_eq!(x, found, "{text:?}");
            }
        }
    }

    #[test]
    fn oversize_input_is_refused() {
        let big = format!("# {}\n", "x".repeat(MAX_REFERENCE_LEN));
        assert_eq!(
            Reference::parse(&big),
            Err(ReferenceError::TooLarge {
                max: MAX_REFERENCE_LEN,
                found: big.len()
            })
        );
        let fits = format!("#{}\n", "x".repeat(MAX_REFERENCE_LEN - 3));
        assert_eq!(fits.len(), MAX_REFERENCE_LEN - 1);
        assert!(Reference::parse(&fits).is_ok());
    }

    #[test]
    fn string_range_bounds_and_integer_expectations() {
        let r = Reference::parse("[range]\nmemory_mib = [\"512\", 4096]\n").unwrap();
        assert_eq!(r.rules().get("memory_mib"), Some(&Rule::Range(512, 4096)));
        let r = Reference::parse("[expect]\nvcpus = -3\n").unwrap();
        assert_eq!(r.rules().get("vcpus"), Some(&Rule::Equals("-3".into())));
    }
}
