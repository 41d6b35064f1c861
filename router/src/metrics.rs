//! Metrics in the Prometheus text exposition format, version 0.0.4.
//!
//! No global registry: whoever serves `/metrics` builds an [`Exposition`]
//! from the router's state at scrape time, one call per sample
//! ([`Exposition::counter`], [`Exposition::gauge`],
//! [`Exposition::histogram`]), and sends [`Exposition::render`].
//!
//! The format (<https://prometheus.io/docs/instrumenting/exposition_formats/>):
//!
//! - Samples are grouped by family: one `# HELP` and one `# TYPE` line per
//!   metric name, then all of its samples, whatever order the calls came
//!   in. Families appear in the order of their first call.
//! - Label values escape `\` as `\\`, `"` as `\"` and a line feed as `\n`;
//!   HELP text escapes `\` and line feeds.
//! - Values are Go-style floats: `12`, `0.25`, `+Inf`, `-Inf`, `NaN`.
//! - A histogram is the cumulative series `<name>_bucket{le="..."}` (the
//!   last one `le="+Inf"`), then `<name>_sum` and `<name>_count`.
//!
//! A call with a malformed metric or label name, or that reuses a name with
//! another kind, would make the whole scrape unparseable: it is dropped with
//! a warning instead (a programming error, never caused by network input).
//!
//! [`Histogram`] records durations in fixed buckets
//! ([`DURATION_BUCKETS_SECONDS`]) with `Cell`s, so it can be updated
//! through `&self` inside an `Rc`-shared struct on the router's one thread.
//! [`process_rss_bytes`] reads the process's resident memory from `/proc`.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

/// The `Content-Type` of a rendered [`Exposition`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds, inclusive) of the finite buckets of a
/// [`Histogram`]; a last `+Inf` bucket counts every observation.
pub const DURATION_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (reset when the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with their sum and count.
    Histogram,
}

impl Kind {
    /// The word on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A distribution of durations in the fixed buckets
/// [`DURATION_BUCKETS_SECONDS`] plus `+Inf`, with the sum and count of the
/// observations. Updated through `&self` (cells: single-threaded use).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative: index `i <
    /// DURATION_BUCKETS_SECONDS.len()` counts values in
    /// `(bound[i-1], bound[i]]`; the last index counts values above the
    /// largest bound.
    per_bucket: [Cell<u64>; DURATION_BUCKETS_SECONDS.len() + 1],
    /// Sum of all observed values, in seconds.
    sum: Cell<f64>,
    /// Number of observations.
    count: Cell<u64>,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one observation of `secs` seconds. A NaN is ignored (it would
    /// make the sum NaN for good); a negative value counts in the first
    /// bucket.
    pub fn observe(&self, secs: f64) {
        if secs.is_nan() {
            return;
        }
        let index = DURATION_BUCKETS_SECONDS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS_SECONDS.len());
        let bucket = &self.per_bucket[index];
        bucket.set(bucket.get().saturating_add(1));
        self.sum.set(self.sum.get() + secs);
        self.count.set(self.count.get().saturating_add(1));
    }

    /// Records one observed duration.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// Sum of the observations so far, in seconds.
    pub fn sum(&self) -> f64 {
        self.sum.get()
    }

    /// Cumulative counts: `(upper bound, observations <= bound)` for each
    /// bucket, the last with bound `+Inf` (equal to [`Histogram::count`]).
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let bounds = DURATION_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY));
        let mut running = 0u64;
        bounds
            .zip(self.per_bucket.iter())
            .map(|(bound, bucket)| {
                running = running.saturating_add(bucket.get());
                (bound, running)
            })
            .collect()
    }
}

/// One metric family being built: its header and its rendered sample lines.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    /// Sample lines, each ending in `\n`, in call order.
    samples: String,
}

/// A set of metric families being built for one scrape; see the module
/// documentation for the format rules it follows.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Families in order of first appearance.
    families: Vec<Family>,
    /// Family name to its index in `families`.
    by_name: HashMap<String, usize>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample of the counter family `name` (by convention ending
    /// in `_total`) with the given labels. Each label set should be given
    /// once per family.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if let Some(samples) = self.family_samples(name, help, Kind::Counter, labels) {
            write_sample(samples, name, "", labels, None, value);
        }
    }

    /// Adds one sample of the gauge family `name` with the given labels.
    /// Each label set should be given once per family.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        if let Some(samples) = self.family_samples(name, help, Kind::Gauge, labels) {
            write_sample(samples, name, "", labels, None, value);
        }
    }

    /// Adds the series of one histogram of the family `name` with the given
    /// labels (which must not include `le`): its cumulative buckets, sum
    /// and count as they are now. Each label set should be given once per
    /// family.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) {
        if let Some(samples) = self.family_samples(name, help, Kind::Histogram, labels) {
            let mut le = String::new();
            for (bound, cumulative) in histogram.cumulative_buckets() {
                le.clear();
                let _ = write!(le, "{}", PromFloat(bound));
                write_sample(
                    samples,
                    name,
                    "_bucket",
                    labels,
                    Some(("le", &le)),
                    cumulative as f64,
                );
            }
            write_sample(samples, name, "_sum", labels, None, histogram.sum());
            write_sample(
                samples,
                name,
                "_count",
                labels,
                None,
                histogram.count() as f64,
            );
        }
    }

    /// The whole exposition as text: each family's `# HELP` and `# TYPE`
    /// lines followed by its samples, every line ending in `\n`.
    pub fn render(&self) -> String {
        let size = self
            .families
            .iter()
            .map(|family| 32 + 2 * family.name.len() + family.help.len() + family.samples.len())
            .sum();
        let mut out = String::with_capacity(size);
        for family in &self.families {
            out.push_str("# HELP ");
            out.push_str(&family.name);
            out.push(' ');
            escape_help_into(&mut out, &family.help);
            out.push('\n');
            out.push_str("# TYPE ");
            out.push_str(&family.name);
            out.push(' ');
            out.push_str(family.kind.as_str());
            out.push('\n');
            out.push_str(&family.samples);
        }
        out
    }

    /// The sample buffer of family `name`, created with `help` and `kind`
    /// on first use; `None` (after a warning) if the name or a label name
    /// is malformed or the family already exists with another kind.
    fn family_samples(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Option<&mut String> {
        if !is_valid_metric_name(name) {
            tracing::warn!(metric = name, "metric dropped: malformed metric name");
            return None;
        }
        if let Some((label, _)) = labels.iter().find(|(label, _)| {
            !is_valid_label_name(label) || (kind == Kind::Histogram && *label == "le")
        }) {
            tracing::warn!(
                metric = name,
                label,
                "metric dropped: malformed or reserved label name"
            );
            return None;
        }
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => {
                self.families.push(Family {
                    name: name.to_owned(),
                    help: help.to_owned(),
                    kind,
                    samples: String::new(),
                });
                let index = self.families.len() - 1;
                self.by_name.insert(name.to_owned(), index);
                index
            }
        };
        let family = &mut self.families[index];
        if family.kind != kind {
            tracing::warn!(
                metric = name,
                registered = %family.kind,
                requested = %kind,
                "metric dropped: family already has another type"
            );
            return None;
        }
        Some(&mut family.samples)
    }
}

/// Appends one sample line: `name+suffix{labels,extra} value\n` (no braces
/// when there are no labels).
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut all = labels.iter().copied().chain(extra);
    if let Some(first) = all.next() {
        out.push('{');
        for (i, (label, label_value)) in std::iter::once(first).chain(all).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value_into(out, label_value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", PromFloat(value));
}

/// Appends `value` escaped for a label value: `\`, `"` and line feed.
fn escape_label_value_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `help` escaped for a `# HELP` line: `\` and line feed.
fn escape_help_into(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A float as Prometheus writes it: `+Inf`, `-Inf`, `NaN`, otherwise the
/// shortest text that reads back as the same number (`12`, `0.005`).
struct PromFloat(f64);

impl fmt::Display for PromFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if value.is_nan() {
            f.write_str("NaN")
        } else if value == f64::INFINITY {
            f.write_str("+Inf")
        } else if value == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{value}")
        }
    }
}

/// The process's resident set size in bytes (`VmRSS` of
/// `/proc/self/status`), or `None` where that is not available.
pub fn process_rss_bytes() -> Option<u64> {
    // Reading /proc costs tens of microseconds of system time: at most
    // once a second (management and scrapes may ask often).
    thread_local! {
        static LAST: std::cell::Cell<Option<(std::time::Instant, Option<u64>)>> =
            const { std::cell::Cell::new(None) };
    }
    if let Some((at, v)) = LAST.get() {
        if at.elapsed() < Duration::from_secs(1) {
            return v;
        }
    }
    let v = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_vm_rss_bytes(&status));
    LAST.set(Some((std::time::Instant::now(), v)));
    v
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let amount: u64 = words.next()?.parse().ok()?;
    match words.next()? {
        "kB" => amount.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_counter_and_gauge_render() {
        let mut out = Exposition::new();
        out.counter(
            "tether_address_flows_opened_total",
            "Flows opened per address.",
            &[("address", "db")],
            12.0,
        );
        out.gauge("tether_links_up", "Links up.", &[], 3.0);
        out.gauge("tether_ratio", "A ratio.", &[("a", "x"), ("b", "y")], 0.25);
        assert_eq!(
            out.render(),
            "# HELP tether_address_flows_opened_total Flows opened per address.\n\
             # TYPE tether_address_flows_opened_total counter\n\
             tether_address_flows_opened_total{address=\"db\"} 12\n\
             # HELP tether_links_up Links up.\n\
             # TYPE tether_links_up gauge\n\
             tether_links_up 3\n\
             # HELP tether_ratio A ratio.\n\
             # TYPE tether_ratio gauge\n\
             tether_ratio{a=\"x\",b=\"y\"} 0.25\n"
        );
    }

    #[test]
    fn metrics_floats_render_the_prometheus_way() {
        let text = |v: f64| PromFloat(v).to_string();
        assert_eq!(text(12.0), "12");
        assert_eq!(text(0.0), "0");
        assert_eq!(text(0.005), "0.005");
        assert_eq!(text(-2.5), "-2.5");
        assert_eq!(text(1e300), format!("1{}", "0".repeat(300)));
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(text(f64::NAN), "NaN");
        for v in [
            0.1,
            1.0 / 3.0,
            1e-9,
            123456789.0125,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(text(v).parse::<f64>().ok(), Some(v), "round trip of {v}");
        }
    }

    #[test]
    fn metrics_histogram_renders_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new();
        histogram.observe(0.0005); // le 0.001
        histogram.observe(0.001); // le 0.001 (bounds are inclusive)
        histogram.observe(0.2); // le 0.5
        histogram.observe_duration(Duration::from_secs(2)); // le 5
        histogram.observe(1000.0); // only +Inf
        histogram.observe(f64::NAN); // ignored
        assert_eq!(histogram.count(), 5);
        let mut out = Exposition::new();
        out.histogram(
            "tether_flow_duration_seconds",
            "Flow durations.",
            &[("address", "db")],
            &histogram,
        );
        let expected_buckets = [
            ("0.001", 2),
            ("0.005", 2),
            ("0.01", 2),
            ("0.05", 2),
            ("0.1", 2),
            ("0.5", 3),
            ("1", 3),
            ("5", 4),
            ("10", 4),
            ("30", 4),
            ("60", 4),
            ("300", 4),
            ("+Inf", 5),
        ];
        let mut expected = String::from(
            "# HELP tether_flow_duration_seconds Flow durations.\n\
             # TYPE tether_flow_duration_seconds histogram\n",
        );
        for (le, count) in expected_buckets {
            expected.push_str(&format!(
                "tether_flow_duration_seconds_bucket{{address=\"db\",le=\"{le}\"}} {count}\n"
            ));
        }
        expected.push_str(&format!(
            "tether_flow_duration_seconds_sum{{address=\"db\"}} {}\n",
            0.0005 + 0.001 + 0.2 + 2.0 + 1000.0
        ));
        expected.push_str("tether_flow_duration_seconds_count{address=\"db\"} 5\n");
        assert_eq!(out.render(), expected);
    }

    #[test]
    fn metrics_empty_histogram_without_labels() {
        let mut out = Exposition::new();
        out.histogram("h_seconds", "H.", &[], &Histogram::new());
        let text = out.render();
        assert!(
            text.contains("h_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("h_seconds_bucket{le=\"+Inf\"} 0\n"), "{text}");
        assert!(
            text.ends_with("h_seconds_sum 0\nh_seconds_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn metrics_escapes_label_values_and_help() {
        let mut out = Exposition::new();
        out.gauge(
            "g",
            "Help with \\ backslash\nand \"quotes\".",
            &[("path", "C:\\dir\\\"file\"\nline2")],
            1.0,
        );
        assert_eq!(
            out.render(),
            "# HELP g Help with \\\\ backslash\\nand \"quotes\".\n\
             # TYPE g gauge\n\
             g{path=\"C:\\\\dir\\\\\\\"file\\\"\\nline2\"} 1\n"
        );
    }

    #[test]
    fn metrics_groups_samples_by_family_whatever_the_call_order() {
        let mut out = Exposition::new();
        out.counter("a_total", "A.", &[("address", "x")], 1.0);
        out.gauge("b", "B.", &[("address", "x")], 2.0);
        out.counter("a_total", "A.", &[("address", "y")], 3.0);
        out.gauge("b", "B.", &[("address", "y")], 4.0);
        out.counter("a_total", "A.", &[("address", "z")], 5.0);
        assert_eq!(
            out.render(),
            "# HELP a_total A.\n\
             # TYPE a_total counter\n\
             a_total{address=\"x\"} 1\n\
             a_total{address=\"y\"} 3\n\
             a_total{address=\"z\"} 5\n\
             # HELP b B.\n\
             # TYPE b gauge\n\
             b{address=\"x\"} 2\n\
             b{address=\"y\"} 4\n"
        );
    }

    #[test]
    fn metrics_drops_malformed_names_and_kind_conflicts() {
        let mut out = Exposition::new();
        out.gauge("ok", "Ok.", &[], 1.0);
        out.counter("ok", "Now a counter?", &[], 2.0); // other kind
        out.gauge("9starts_with_digit", "Bad.", &[], 1.0);
        out.gauge("has-dash", "Bad.", &[], 1.0);
        out.gauge("", "Bad.", &[], 1.0);
        out.gauge("bad_label", "Bad.", &[("has space", "v")], 1.0);
        out.gauge("reserved_label", "Bad.", &[("__name__", "v")], 1.0);
        out.histogram("h", "Bad.", &[("le", "1")], &Histogram::new());
        assert_eq!(out.render(), "# HELP ok Ok.\n# TYPE ok gauge\nok 1\n");
        assert!(is_valid_metric_name("ns:sub_name_total"));
        assert!(is_valid_label_name("_address2"));
    }

    #[test]
    fn metrics_process_rss() {
        let status = "Name:\ttether\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_bytes("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss_bytes("VmRSS:\t12 MB\n"), None);
        if std::path::Path::new("/proc/self/status").exists() {
            let rss = process_rss_bytes().expect("VmRSS in /proc/self/status");
            assert!(rss > 0);
        }
    }

    /// The exposition read back by the Prometheus project's own Python
    /// parser (`prometheus_client.parser.text_string_to_metric_families`,
    /// Debian package `python3-prometheus-client`) from the system Python.
    /// Skipped with a note when that cannot be imported, unless
    /// `TETHER_REQUIRE_PROMETHEUS_CLIENT=1`, which makes it a failure.
    #[test]
    fn metrics_output_parses_with_prometheus_client() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        const PYTHON: &str = "/usr/bin/python3";
        const SKIP_NOTE: &str = "metrics_output_parses_with_prometheus_client";
        let importable = Command::new(PYTHON)
            .args(["-c", "import prometheus_client.parser"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !importable {
            let why = format!(
                "{PYTHON} cannot import prometheus_client (install python3-prometheus-client)"
            );
            if std::env::var("TETHER_REQUIRE_PROMETHEUS_CLIENT").is_ok_and(|v| v == "1") {
                panic!("{SKIP_NOTE}: TETHER_REQUIRE_PROMETHEUS_CLIENT=1 but {why}");
            }
            println!("SKIPPED {SKIP_NOTE}: {why}");
            return;
        }

        let latency = Histogram::new();
        for secs in [0.0002, 0.003, 0.003, 0.7, 42.0, 1e6] {
            latency.observe(secs);
        }
        let mut out = Exposition::new();
        out.counter(
            "tether_address_flows_opened_total",
            "Flows opened, per address.",
            &[("address", "db")],
            12.0,
        );
        out.histogram(
            "tether_flow_duration_seconds",
            "Duration of flows.\nSecond \\ line.",
            &[("address", "db"), ("router", "east")],
            &latency,
        );
        out.counter(
            "tether_address_flows_opened_total",
            "Flows opened, per address.",
            &[("address", "we\"ird\\ad\ndress,x=y}")],
            7.0,
        );
        out.gauge("tether_up", "Up.", &[], 1.0);
        out.gauge("tether_inf", "Infinities.", &[("sign", "+")], f64::INFINITY);
        out.gauge(
            "tether_inf",
            "Infinities.",
            &[("sign", "-")],
            f64::NEG_INFINITY,
        );
        out.gauge("tether_nan", "Not a number.", &[], f64::NAN);
        out.histogram(
            "tether_flow_duration_seconds",
            "Duration of flows.\nSecond \\ line.",
            &[("address", "web"), ("router", "east")],
            &Histogram::new(),
        );
        let text = out.render();

        // Prints one JSON object per family: name, type, help and samples
        // [name, labels, value] (value as text so NaN and infinities survive).
        const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
out = []
for family in text_string_to_metric_families(text):
    out.append({
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "samples": [[s.name, s.labels, repr(float(s.value))] for s in family.samples],
    })
print(json.dumps(out))
"#;
        let mut child = Command::new(PYTHON)
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3");
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(text.as_bytes())
            .expect("write exposition to python3");
        let output = child.wait_with_output().expect("python3 output");
        assert!(
            output.status.success(),
            "prometheus_client rejected the exposition:\n{}\n--- text ---\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed = String::from_utf8(output.stdout).expect("utf-8 JSON");

        // Compare against the expected structure, written as the same JSON.
        // prometheus_client names a counter family without `_total`.
        let mut buckets = String::new();
        for (addr, counts) in [
            ("db", [1, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 6]),
            ("web", [0; 13]),
        ] {
            let bounds = DURATION_BUCKETS_SECONDS
                .iter()
                .map(|b| PromFloat(*b).to_string())
                .chain(std::iter::once("+Inf".to_owned()));
            for (le, count) in bounds.zip(counts) {
                buckets.push_str(&format!(
                    r#"["tether_flow_duration_seconds_bucket", {{"address": "{addr}", "router": "east", "le": "{le}"}}, "{count}.0"], "#
                ));
            }
            let (sum, count) = if addr == "db" {
                (latency.sum(), latency.count())
            } else {
                (0.0, 0)
            };
            buckets.push_str(&format!(
                r#"["tether_flow_duration_seconds_sum", {{"address": "{addr}", "router": "east"}}, "{}"], "#,
                python_float_repr(sum)
            ));
            buckets.push_str(&format!(
                r#"["tether_flow_duration_seconds_count", {{"address": "{addr}", "router": "east"}}, "{count}.0"], "#
            ));
        }
        let buckets = buckets.trim_end_matches(", ");
        let expected = format!(
            concat!(
                r#"[{{"name": "tether_address_flows_opened", "type": "counter", "help": "Flows opened, per address.", "samples": ["#,
                r#"["tether_address_flows_opened_total", {{"address": "db"}}, "12.0"], "#,
                r#"["tether_address_flows_opened_total", {{"address": "we\"ird\\ad\ndress,x=y}}"}}, "7.0"]]}}, "#,
                r#"{{"name": "tether_flow_duration_seconds", "type": "histogram", "help": "Duration of flows.\nSecond \\ line.", "samples": [{buckets}]}}, "#,
                r#"{{"name": "tether_up", "type": "gauge", "help": "Up.", "samples": [["tether_up", {{}}, "1.0"]]}}, "#,
                r#"{{"name": "tether_inf", "type": "gauge", "help": "Infinities.", "samples": [["tether_inf", {{"sign": "+"}}, "inf"], ["tether_inf", {{"sign": "-"}}, "-inf"]]}}, "#,
                r#"{{"name": "tether_nan", "type": "gauge", "help": "Not a number.", "samples": [["tether_nan", {{}}, "nan"]]}}]"#,
                "\n"
            ),
            buckets = buckets
        );
        assert_eq!(parsed, expected, "--- text ---\n{text}");
    }

    /// Python's `repr` of a float, for the sums compared above (only the
    /// plain decimal forms the test needs).
    fn python_float_repr(value: f64) -> String {
        let text = format!("{value}");
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    }
}
