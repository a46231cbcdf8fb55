//! A parser for the Prometheus text exposition format 0.0.4 and OpenMetrics 1.0 text.
//!
//! Why our own: no maintained Rust crate parses what real LLM servers emit.
//! `prometheus-parse` matches names with `\w+`, so every `vllm:`/`sglang:`/`llamacpp:` series
//! is silently dropped, and it splits labels naively so escaped values break;
//! `openmetrics-parser` is LGPL-3.0 and all-or-nothing (one untyped line after a typed family
//! fails the whole body); `prom_text_format_parser` rejects OpenMetrics counters. What we need
//! is small: one pass over the body, names with colons, `_created` series, a histogram whose
//! name ends in `_total` (`vllm:iteration_tokens_total`), labels beginning with `_`, escaped
//! label values, `NaN`/`±Inf`, timestamps, exemplars, `# UNIT`, comments, blank lines and CRLF.
//!
//! Design:
//! * **Zero-copy where possible.** Names, label names and unescaped label values borrow from the
//!   body; only a label value or HELP text that contains an escape is copied (`Cow::Owned`).
//!   Samples and labels live in two flat vectors sized from the body's line count before the
//!   pass, so a parse makes a fixed handful of allocations whatever the number of samples.
//! * **Grouping into families.** A sample belongs to the family of the last `# TYPE`/`# HELP`
//!   when its name is that family's name or the name plus a suffix legal for the type
//!   (histogram `_bucket/_sum/_count`, summary `_sum/_count`, counter `_total`, OpenMetrics
//!   `_created` and `_info`). Counters come both ways: 0.0.4 style (`# TYPE x_total counter`,
//!   sample `x_total`) and OpenMetrics style (`# TYPE x counter`, sample `x_total`);
//!   [`Family::base_name`] gives the name without `_total` in both cases. A sample with no
//!   declared family starts an untyped one.
//! * **Errors are per line and per family, never fatal.** A malformed line is counted by
//!   [`ErrorKind`] and the family it belongs to is marked [`Family::damaged`], so a consumer can
//!   drop that family whole rather than use half of it. Only body-level problems (not UTF-8,
//!   HTML, truncated, no samples) make a body unusable; [`Exposition::fatal`] reports those.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

/// The format a body claims (from the `Content-Type`) or appears to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Prometheus text 0.0.4 (also what `text/plain; version=1.0.0` from Python clients is).
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 text: requires `# EOF`; timestamps are seconds.
    OpenMetrics,
}

impl Format {
    /// Picks the format from a `Content-Type` header value.
    pub fn from_content_type(ct: Option<&str>) -> Format {
        match ct {
            Some(ct)
                if ct
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/openmetrics-text") =>
            {
                Format::OpenMetrics
            }
            _ => Format::Prometheus,
        }
    }
}

/// The declared type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    /// `untyped` (0.0.4), `unknown` (OpenMetrics), or no `# TYPE` line at all.
    Unknown,
}

impl MetricType {
    fn parse(s: &str) -> Option<MetricType> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "untyped" | "unknown" => MetricType::Unknown,
            _ => return None,
        })
    }

    /// The keyword of a `# TYPE` line (`untyped` for [`MetricType::Unknown`] in 0.0.4).
    pub fn as_str(self, format: Format) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => match format {
                Format::Prometheus => "untyped",
                Format::OpenMetrics => "unknown",
            },
        }
    }

    /// Sample-name suffixes legal for this type (besides the bare family name).
    fn suffixes(self) -> &'static [(&'static str, Suffix)] {
        match self {
            MetricType::Counter => &[("_total", Suffix::Total), ("_created", Suffix::Created)],
            MetricType::Histogram => &[
                ("_bucket", Suffix::Bucket),
                ("_sum", Suffix::Sum),
                ("_count", Suffix::Count),
                ("_created", Suffix::Created),
            ],
            MetricType::GaugeHistogram => &[
                ("_bucket", Suffix::Bucket),
                ("_gsum", Suffix::Sum),
                ("_gcount", Suffix::Count),
            ],
            MetricType::Summary => &[
                ("_sum", Suffix::Sum),
                ("_count", Suffix::Count),
                ("_created", Suffix::Created),
            ],
            MetricType::Info => &[("_info", Suffix::Info)],
            MetricType::Gauge | MetricType::StateSet | MetricType::Unknown => &[],
        }
    }
}

/// OpenMetrics: a family with a non-empty unit has a name ending in `_<unit>`.
fn unit_matches(family: &str, unit: &str) -> bool {
    unit.is_empty()
        || family
            .strip_suffix(unit)
            .is_some_and(|head| head.ends_with('_'))
}

/// Which part of its family a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suffix {
    /// The sample name equals the family name.
    None,
    Total,
    Created,
    Bucket,
    Sum,
    Count,
    Info,
}

/// Why a line or a body was not (fully) understood. Exported as the `kind` label of
/// `vllm_sentinel_upstream_parse_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Body-level: the body is not an exposition (HTML, JSON, binary).
    ContentType,
    /// Body-level: not valid UTF-8.
    Encoding,
    /// Body-level: the last line has no newline, or OpenMetrics without `# EOF`.
    Truncated,
    /// Body-level: no sample at all.
    Empty,
    /// A line that is neither a comment nor a well-formed sample.
    Syntax,
    /// A sample value that is not a number, or (OpenMetrics) one its type forbids: a negative
    /// or NaN counter `_total`, bucket or count, a `_created` that is not a finite timestamp.
    Value,
    /// A malformed label set: bad name, bad escape, unterminated value, repeated name.
    Label,
    /// A timestamp that is not a number.
    Timestamp,
    /// The same series (name and label set) twice.
    DuplicateSeries,
    /// A second `# TYPE`, metadata after samples, a family split in two, a sample suffix the
    /// type does not allow.
    TypeConflict,
    /// A malformed `# HELP`/`# TYPE`/`# UNIT` line, or (OpenMetrics) a unit that is not the
    /// `_<unit>` suffix of its family's name.
    Metadata,
    /// Lines after OpenMetrics `# EOF`.
    AfterEof,
    /// A histogram without `+Inf` bucket, with a non-numeric `le`, or with decreasing buckets;
    /// (OpenMetrics) a `_count`/`_gcount` that differs from the `+Inf` bucket.
    Histogram,
}

impl ErrorKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::ContentType,
        ErrorKind::Encoding,
        ErrorKind::Truncated,
        ErrorKind::Empty,
        ErrorKind::Syntax,
        ErrorKind::Value,
        ErrorKind::Label,
        ErrorKind::Timestamp,
        ErrorKind::DuplicateSeries,
        ErrorKind::TypeConflict,
        ErrorKind::Metadata,
        ErrorKind::AfterEof,
        ErrorKind::Histogram,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ContentType => "content_type",
            ErrorKind::Encoding => "encoding",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Empty => "empty",
            ErrorKind::Syntax => "syntax",
            ErrorKind::Value => "value",
            ErrorKind::Label => "label",
            ErrorKind::Timestamp => "timestamp",
            ErrorKind::DuplicateSeries => "duplicate_series",
            ErrorKind::TypeConflict => "type_conflict",
            ErrorKind::Metadata => "metadata",
            ErrorKind::AfterEof => "after_eof",
            ErrorKind::Histogram => "histogram",
        }
    }

    /// True for problems that make the whole body unusable.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorKind::ContentType | ErrorKind::Encoding | ErrorKind::Truncated | ErrorKind::Empty
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One error, with the 1-based line it was found on (0 for body-level errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub kind: ErrorKind,
    pub line: u32,
}

/// One label. The value is borrowed unless it contained an escape.
#[derive(Debug, Clone, PartialEq)]
pub struct Label<'a> {
    pub name: &'a str,
    pub value: Cow<'a, str>,
}

/// An OpenMetrics exemplar (` # {labels} value [timestamp]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exemplar {
    /// Range into [`Exposition::labels`].
    pub labels: (u32, u32),
    pub value: f64,
    pub timestamp: Option<f64>,
}

/// One sample line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub suffix: Suffix,
    /// Range into [`Exposition::labels`].
    pub labels: (u32, u32),
    pub value: f64,
    /// As written: milliseconds in 0.0.4, seconds in OpenMetrics.
    pub timestamp: Option<f64>,
    pub exemplar: Option<Exemplar>,
}

/// A metric family: metadata and a contiguous run of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    /// The name as declared (or the sample name for an undeclared family).
    pub name: &'a str,
    pub typ: MetricType,
    pub help: Option<Cow<'a, str>>,
    pub unit: Option<&'a str>,
    /// Range into [`Exposition::samples`].
    pub samples: (u32, u32),
    /// True when a line of this family was malformed: consumers should drop the family whole.
    pub damaged: bool,
    /// True when a `# TYPE` line declared it.
    pub typed: bool,
}

impl Family<'_> {
    /// The name without a counter's `_total` (0.0.4 bodies declare `# TYPE x_total counter`,
    /// OpenMetrics bodies `# TYPE x counter`; both give `x`). Other types: the name.
    pub fn base_name(&self) -> &str {
        if self.typ == MetricType::Counter {
            self.name.strip_suffix("_total").unwrap_or(self.name)
        } else {
            self.name
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        (self.samples.1 - self.samples.0) as usize
    }

    /// True when the family has no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.0 == self.samples.1
    }
}

/// Everything parsed from one body.
#[derive(Debug, Clone, Default)]
pub struct Exposition<'a> {
    pub format: Format,
    pub families: Vec<Family<'a>>,
    pub samples: Vec<Sample<'a>>,
    pub labels: Vec<Label<'a>>,
    /// The first errors found (at most [`MAX_KEPT_ERRORS`]); [`Exposition::error_counts`] has all.
    pub errors: Vec<ParseError>,
    counts: [u32; ErrorKind::ALL.len()],
    /// True when an OpenMetrics `# EOF` line was seen.
    pub saw_eof: bool,
}

/// How many individual errors a parse keeps (all are counted).
pub const MAX_KEPT_ERRORS: usize = 64;

impl<'a> Exposition<'a> {
    /// The labels of a sample.
    pub fn sample_labels(&self, s: &Sample<'a>) -> &[Label<'a>] {
        &self.labels[s.labels.0 as usize..s.labels.1 as usize]
    }

    /// The samples of a family.
    pub fn family_samples(&self, f: &Family<'a>) -> &[Sample<'a>] {
        &self.samples[f.samples.0 as usize..f.samples.1 as usize]
    }

    /// The value of label `name` on sample `s`.
    pub fn label<'s>(&'s self, s: &Sample<'a>, name: &str) -> Option<&'s str> {
        self.sample_labels(s)
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_ref())
    }

    /// Counts of errors by kind (kinds with none are left out).
    pub fn error_counts(&self) -> impl Iterator<Item = (ErrorKind, u32)> + '_ {
        ErrorKind::ALL
            .iter()
            .map(|k| (*k, self.counts[k.index()]))
            .filter(|(_, n)| *n > 0)
    }

    /// Total number of errors.
    pub fn error_total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// The first body-level error, if the body is unusable.
    pub fn fatal(&self) -> Option<ErrorKind> {
        ErrorKind::ALL
            .iter()
            .copied()
            .find(|k| k.is_fatal() && self.counts[k.index()] > 0)
    }

    fn error(&mut self, kind: ErrorKind, line: u32) {
        self.counts[kind.index()] = self.counts[kind.index()].saturating_add(1);
        if self.errors.len() < MAX_KEPT_ERRORS {
            self.errors.push(ParseError { kind, line });
        }
    }
}

/// Parses raw bytes: checks UTF-8 and sniffs non-expositions, then [`parse`].
pub fn parse_bytes(body: &[u8], format: Format) -> Exposition<'_> {
    match std::str::from_utf8(body) {
        Ok(text) => parse(text, format),
        Err(_) => {
            let mut e = Exposition {
                format,
                ..Default::default()
            };
            e.error(ErrorKind::Encoding, 0);
            e
        }
    }
}

/// Parses a body. Never fails: problems are recorded in [`Exposition::errors`].
pub fn parse(body: &str, format: Format) -> Exposition<'_> {
    let lines = memchr::memchr_iter(b'\n', body.as_bytes()).count() + 1;
    let mut exp = Exposition {
        format,
        families: Vec::with_capacity(lines / 4 + 4),
        samples: Vec::with_capacity(lines),
        // Most series carry two or three labels.
        labels: Vec::with_capacity(lines * 3),
        ..Default::default()
    };
    let head = body.trim_start();
    if head.starts_with('<') || head.starts_with('{') || head.starts_with('[') {
        // An HTML error page, a JSON error: not an exposition at all.
        exp.error(ErrorKind::ContentType, 1);
        return exp;
    }
    let mut p = Parser {
        exp,
        by_name: HashMap::with_capacity_and_hasher(lines / 4 + 4, BuildFast::default()),
        series: HashMap::with_capacity_and_hasher(lines, BuildIdentity::default()),
        current: None,
        hist_scratch: HashMap::default(),
        line_no: 0,
    };
    p.run(body);
    let mut exp = p.exp;
    // An OpenMetrics body that reached `# EOF` is complete even without a sample.
    let complete_om = exp.format == Format::OpenMetrics && exp.saw_eof;
    if exp.samples.is_empty() && exp.fatal().is_none() && !complete_om {
        exp.error(ErrorKind::Empty, 0);
    }
    exp
}

struct Parser<'a> {
    exp: Exposition<'a>,
    /// Family index by declared name.
    by_name: HashMap<&'a str, u32, BuildFast>,
    /// Series identity hash -> sample index (for duplicates).
    series: HashMap<u64, u32, BuildIdentity>,
    /// The family that samples are currently being added to.
    current: Option<u32>,
    /// Reused by the histogram check: series hash -> its running state.
    hist_scratch: HashMap<u64, HistState, BuildIdentity>,
    line_no: u32,
}

impl<'a> Parser<'a> {
    fn run(&mut self, body: &'a str) {
        let bytes = body.as_bytes();
        let mut start = 0usize;
        let mut eof_line = None;
        while start < bytes.len() {
            self.line_no += 1;
            let (end, next, cut) = match memchr::memchr(b'\n', &bytes[start..]) {
                Some(i) => (start + i, start + i + 1, false),
                None => (bytes.len(), bytes.len(), true),
            };
            let mut line = &body[start..end];
            if let Some(l) = line.strip_suffix('\r') {
                line = l;
            }
            // The last line has no newline: the body was cut off, unless that line is the
            // OpenMetrics `# EOF` (whose newline is optional).
            if cut && !(line == "# EOF" && eof_line.is_none()) {
                self.exp.error(ErrorKind::Truncated, self.line_no);
            }
            start = next;
            if eof_line.is_some() {
                // OpenMetrics allows nothing after `# EOF`, not even a blank line.
                if !line.trim().is_empty() || self.exp.format == Format::OpenMetrics {
                    self.exp.error(ErrorKind::AfterEof, self.line_no);
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            if line.as_bytes()[0] == b'#' {
                if line == "# EOF" {
                    eof_line = Some(self.line_no);
                    self.exp.saw_eof = true;
                    continue;
                }
                self.comment(line);
            } else {
                self.sample_line(line);
            }
        }
        if self.exp.format == Format::OpenMetrics && !self.exp.saw_eof {
            self.exp.error(ErrorKind::Truncated, self.line_no);
        }
        self.close_current();
    }

    fn close_current(&mut self) {
        if let Some(fi) = self.current.take() {
            self.check_family(fi);
        }
    }

    /// Checks family-level rules once its samples are all in.
    fn check_family(&mut self, fi: u32) {
        let f = &self.exp.families[fi as usize];
        if f.damaged || !matches!(f.typ, MetricType::Histogram | MetricType::GaugeHistogram) {
            return;
        }
        if !histogram_ok_fast(&self.exp, f, &mut self.hist_scratch) {
            let line = self.line_no;
            self.exp.error(ErrorKind::Histogram, line);
            self.exp.families[fi as usize].damaged = true;
        }
    }

    fn new_family(&mut self, name: &'a str, typ: MetricType, typed: bool) -> u32 {
        self.close_current();
        let at = self.exp.samples.len() as u32;
        self.exp.families.push(Family {
            name,
            typ,
            help: None,
            unit: None,
            samples: (at, at),
            damaged: false,
            typed,
        });
        let fi = (self.exp.families.len() - 1) as u32;
        self.by_name.insert(name, fi);
        self.current = Some(fi);
        fi
    }

    fn damage(&mut self, fi: u32, kind: ErrorKind) {
        let line = self.line_no;
        self.exp.error(kind, line);
        if let Some(f) = self.exp.families.get_mut(fi as usize) {
            f.damaged = true;
        }
    }

    fn comment(&mut self, line: &'a str) {
        let rest = &line[1..];
        let rest = rest.trim_start_matches([' ', '\t']);
        let (kw, rest) = split_word(rest);
        let kind = match kw {
            "HELP" => 0,
            "TYPE" => 1,
            "UNIT" => 2,
            _ => return, // an ordinary comment
        };
        let rest = rest.trim_start_matches([' ', '\t']);
        let (name, text) = split_word(rest);
        if !valid_metric_name(name) {
            let line_no = self.line_no;
            self.exp.error(ErrorKind::Metadata, line_no);
            return;
        }
        let text = text.strip_prefix([' ', '\t']).unwrap_or(text);
        // Find or start the family this metadata is for.
        let fi = match self.by_name.get(name) {
            Some(&fi) => {
                let f = &self.exp.families[fi as usize];
                let has_samples = !f.is_empty();
                let already = match kind {
                    0 => f.help.is_some(),
                    1 => f.typed,
                    _ => f.unit.is_some(),
                };
                if has_samples || already || self.current != Some(fi) {
                    self.damage(fi, ErrorKind::TypeConflict);
                    return;
                }
                fi
            }
            None => self.new_family(name, MetricType::Unknown, false),
        };
        match kind {
            0 => {
                self.exp.families[fi as usize].help = Some(unescape_help(text));
            }
            1 => {
                let t = text.trim_end_matches([' ', '\t']);
                match MetricType::parse(t) {
                    Some(t) => {
                        let f = &mut self.exp.families[fi as usize];
                        f.typ = t;
                        f.typed = true;
                    }
                    None => self.damage(fi, ErrorKind::Metadata),
                }
            }
            _ => {
                let u = text.trim_end_matches([' ', '\t']);
                self.exp.families[fi as usize].unit = Some(u);
                // OpenMetrics: a non-empty unit is the `_<unit>` suffix of the family name
                // (0.0.4 has no `# UNIT`; there the line is only kept as read).
                if self.exp.format == Format::OpenMetrics && !unit_matches(name, u) {
                    self.damage(fi, ErrorKind::Metadata);
                }
            }
        }
    }

    /// Which family a sample named `name` belongs to, and its suffix.
    fn resolve(&mut self, name: &'a str) -> Result<(u32, Suffix), u32> {
        if let Some(fi) = self.current
            && let Some(sfx) = match_family(&self.exp.families[fi as usize], name)
        {
            return Ok((fi, sfx));
        }
        // Not the current family: is it a family seen before (split in two)?
        let mut earlier = self.by_name.get(name).copied();
        if earlier.is_none() {
            for (sfx, _) in ALL_SUFFIXES {
                if let Some(base) = name.strip_suffix(sfx)
                    && let Some(&fi) = self.by_name.get(base)
                    && match_family(&self.exp.families[fi as usize], name).is_some()
                {
                    earlier = Some(fi);
                    break;
                }
            }
        }
        if let Some(fi) = earlier {
            return Err(fi);
        }
        Ok((
            self.new_family(name, MetricType::Unknown, false),
            Suffix::None,
        ))
    }

    fn sample_line(&mut self, line: &'a str) {
        let name_end = scan_name(line.as_bytes(), 0);
        if name_end == 0 {
            let line_no = self.line_no;
            self.exp.error(ErrorKind::Syntax, line_no);
            return;
        }
        let name = &line[..name_end];
        let (fi, suffix) = match self.resolve(name) {
            Ok(x) => x,
            Err(fi) => {
                self.damage(fi, ErrorKind::TypeConflict);
                return;
            }
        };
        let label_start = self.exp.labels.len();
        if let Err(kind) = self.sample_parts(line, name_end, fi, suffix, label_start) {
            // A damaged line leaves none of its labels behind.
            self.exp.labels.truncate(label_start);
            self.damage(fi, kind);
        }
    }

    /// The rest of a sample line after its name (labels, value, timestamp, exemplar), checked
    /// and pushed as a sample of family `fi`; the labels go from `label_start` on.
    fn sample_parts(
        &mut self,
        line: &'a str,
        name_end: usize,
        fi: u32,
        suffix: Suffix,
        label_start: usize,
    ) -> Result<(), ErrorKind> {
        let b = line.as_bytes();
        let name = &line[..name_end];
        let mut i = name_end;
        let strict = self.exp.format == Format::OpenMetrics;
        if b.get(i) == Some(&b'{') {
            i = parse_labels(line, i + 1, &mut self.exp.labels, strict)?;
        }
        let label_end = self.exp.labels.len();
        let (value, timestamp, exemplar) = self.value_and_tail(line, i)?;
        if strict {
            let f = &self.exp.families[fi as usize];
            om_sample_rules(
                f.typ,
                f.name,
                suffix,
                value,
                &self.exp.labels[label_start..label_end],
            )?;
            if let Some(ex) = &exemplar {
                om_exemplar_rules(f.typ, suffix, ex, &self.exp.labels)?;
            }
        }
        self.check_series(name, label_start, label_end, timestamp)?;
        let idx = self.exp.samples.len() as u32;
        self.exp.samples.push(Sample {
            name,
            suffix,
            labels: (label_start as u32, label_end as u32),
            value,
            timestamp,
            exemplar,
        });
        self.exp.families[fi as usize].samples.1 = idx + 1;
        Ok(())
    }

    /// From `i` (after the name and labels): whitespace, the value, an optional timestamp and
    /// an optional exemplar (`# {…} value [timestamp]`, its labels appended to the label store).
    fn value_and_tail(
        &mut self,
        line: &'a str,
        i: usize,
    ) -> Result<(f64, Option<f64>, Option<Exemplar>), ErrorKind> {
        let b = line.as_bytes();
        let ws = skip_ws(b, i);
        if ws == i {
            return Err(ErrorKind::Syntax);
        }
        let (vtok, after) = token(line, ws);
        let value = parse_value(vtok).ok_or(ErrorKind::Value)?;
        let mut i = skip_ws(b, after);
        let mut timestamp = None;
        if i < b.len() && b[i] != b'#' {
            let (ttok, after) = token(line, i);
            // 0.0.4 timestamps are integer milliseconds; OpenMetrics ones are seconds.
            let om = self.exp.format == Format::OpenMetrics;
            match parse_value(ttok) {
                Some(t) if t.is_finite() && (om || t.fract() == 0.0) => timestamp = Some(t),
                _ => return Err(ErrorKind::Timestamp),
            }
            i = skip_ws(b, after);
        }
        let mut exemplar = None;
        if i < b.len() {
            if b[i] != b'#' {
                return Err(ErrorKind::Syntax);
            }
            let strict = self.exp.format == Format::OpenMetrics;
            exemplar = Some(parse_exemplar(line, i + 1, &mut self.exp.labels, strict)?);
        }
        Ok((value, timestamp, exemplar))
    }

    /// Duplicate label names in one sample, or a series already seen: an error. Records a new
    /// series (by hash) otherwise. OpenMetrics lets a series have several points when each
    /// has a timestamp greater than the previous one.
    fn check_series(
        &mut self,
        name: &'a str,
        label_start: usize,
        label_end: usize,
        timestamp: Option<f64>,
    ) -> Result<(), ErrorKind> {
        let labels = &self.exp.labels[label_start..label_end];
        for (j, l) in labels.iter().enumerate() {
            if labels[..j].iter().any(|o| o.name == l.name) {
                return Err(ErrorKind::Label);
            }
        }
        let h = series_hash(name, labels);
        if let Some(&prev) = self.series.get(&h) {
            let p = &self.exp.samples[prev as usize];
            let pl = &self.exp.labels[p.labels.0 as usize..p.labels.1 as usize];
            if p.name == name && same_label_set(pl, labels) {
                let later = matches!((p.timestamp, timestamp), (Some(a), Some(b)) if b > a);
                if self.exp.format == Format::Prometheus || !later {
                    return Err(ErrorKind::DuplicateSeries);
                }
                let idx = self.exp.samples.len() as u32;
                self.series.insert(h, idx);
            }
        } else {
            let idx = self.exp.samples.len() as u32;
            self.series.insert(h, idx);
        }
        Ok(())
    }
}

/// The series map's keys are already hashes: pass them through.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type BuildIdentity = std::hash::BuildHasherDefault<IdentityHasher>;

/// A fast non-cryptographic hasher for family names (keys come from one body).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes_hash(self.0, bytes);
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BuildFast = std::hash::BuildHasherDefault<FastHasher>;

const ALL_SUFFIXES: [(&str, Suffix); 9] = [
    ("_total", Suffix::Total),
    ("_created", Suffix::Created),
    ("_bucket", Suffix::Bucket),
    ("_sum", Suffix::Sum),
    ("_count", Suffix::Count),
    ("_gsum", Suffix::Sum),
    ("_gcount", Suffix::Count),
    ("_info", Suffix::Info),
    ("", Suffix::None),
];

fn match_family(f: &Family<'_>, name: &str) -> Option<Suffix> {
    if name == f.name {
        return Some(Suffix::None);
    }
    let rest = name.strip_prefix(f.name)?;
    f.typ
        .suffixes()
        .iter()
        .find(|(s, _)| *s == rest)
        .map(|(_, sfx)| *sfx)
}

/// Running state of one histogram series in [`histogram_ok_fast`].
#[derive(Clone, Copy)]
struct HistState {
    last_le: f64,
    last_count: f64,
    sorted: bool,
    /// The `+Inf` bucket's value, once seen.
    inf: Option<f64>,
    /// The `_count` (`_gcount`) value, once seen.
    count: Option<f64>,
}

/// Histogram rules (every series has a `+Inf` bucket, `le` values are numbers, counts do not
/// decrease with `le`; in OpenMetrics `_count`/`_gcount`, when present, equals `+Inf`), checked without allocating per family: one scratch map reused for the
/// whole body. In 0.0.4 buckets exposed out of `le` order are accepted (the monotonic check is
/// then skipped for that series; [`group_histograms`] sorts them); OpenMetrics requires them
/// sorted. A series is its labels without `le` and its
/// timestamp (OpenMetrics allows several timestamped points).
fn histogram_ok_fast(
    exp: &Exposition<'_>,
    f: &Family<'_>,
    scratch: &mut HashMap<u64, HistState, BuildIdentity>,
) -> bool {
    let strict = exp.format == Format::OpenMetrics;
    scratch.clear();
    for s in exp.family_samples(f) {
        let labels = exp.sample_labels(s);
        let h = labels_hash_without_le(labels) ^ s.timestamp.map_or(0, |t| mix(t.to_bits()));
        let e = scratch.entry(h).or_insert(HistState {
            last_le: f64::NEG_INFINITY,
            last_count: f64::NEG_INFINITY,
            sorted: true,
            inf: None,
            count: None,
        });
        match s.suffix {
            Suffix::Bucket => {
                let Some(le) = labels
                    .iter()
                    .find(|l| l.name == "le")
                    .and_then(|l| parse_value(&l.value))
                else {
                    return false;
                };
                if le.is_nan() {
                    return false;
                }
                if le < e.last_le {
                    if strict {
                        return false;
                    }
                    e.sorted = false;
                } else if e.sorted && s.value < e.last_count {
                    return false;
                }
                e.last_le = e.last_le.max(le);
                e.last_count = s.value;
                if le == f64::INFINITY {
                    e.inf = Some(s.value);
                }
            }
            Suffix::Count => e.count = Some(s.value),
            Suffix::Sum | Suffix::Created => {}
            _ => return false,
        }
    }
    // OpenMetrics: the count is the `+Inf` bucket (0.0.4 documents the same equality, but
    // scrapers do not enforce it there; see docs/scrape.md).
    scratch.values().all(|e| match (e.inf, e.count) {
        (None, _) => false,
        (Some(inf), Some(count)) if strict => inf == count,
        _ => true,
    })
}

/// OpenMetrics rules on one sample's value and labels: counter totals, bucket counts and
/// counts are neither negative nor NaN (`+Inf` is allowed), `_created` is a finite timestamp
/// (it may precede the epoch), info values are 1, stateset values 0 or 1 with a label named as
/// the family, summary quantiles between 0 and 1; counters, histograms and infos have no
/// sample under the bare family name.
fn om_sample_rules(
    typ: MetricType,
    family: &str,
    suffix: Suffix,
    value: f64,
    labels: &[Label<'_>],
) -> Result<(), ErrorKind> {
    let non_negative = |v: f64| {
        if v >= 0.0 {
            Ok(())
        } else {
            Err(ErrorKind::Value)
        }
    };
    match (typ, suffix) {
        (MetricType::Counter, Suffix::Total)
        | (MetricType::Histogram | MetricType::GaugeHistogram, Suffix::Bucket | Suffix::Count)
        | (MetricType::Summary, Suffix::Count) => non_negative(value),
        (_, Suffix::Created) if !value.is_finite() => Err(ErrorKind::Value),
        (
            MetricType::Counter
            | MetricType::Histogram
            | MetricType::GaugeHistogram
            | MetricType::Info,
            Suffix::None,
        ) => Err(ErrorKind::TypeConflict),
        (MetricType::Info, Suffix::Info) if value != 1.0 => Err(ErrorKind::Value),
        (MetricType::StateSet, _) => {
            if value != 0.0 && value != 1.0 {
                return Err(ErrorKind::Value);
            }
            if !labels.iter().any(|l| l.name == family) {
                return Err(ErrorKind::Label);
            }
            Ok(())
        }
        (MetricType::Summary, Suffix::None) => {
            let q = labels
                .iter()
                .find(|l| l.name == "quantile")
                .ok_or(ErrorKind::Label)?;
            match parse_value(&q.value) {
                Some(q) if (0.0..=1.0).contains(&q) => Ok(()),
                _ => Err(ErrorKind::Value),
            }
        }
        _ => Ok(()),
    }
}

/// OpenMetrics exemplars: only on a counter's `_total` and a (gauge) histogram's `_bucket`
/// (else a type conflict); their label set is at most 128 characters (names and values).
fn om_exemplar_rules(
    typ: MetricType,
    suffix: Suffix,
    ex: &Exemplar,
    labels: &[Label<'_>],
) -> Result<(), ErrorKind> {
    match (typ, suffix) {
        (MetricType::Counter, Suffix::Total)
        | (MetricType::Histogram | MetricType::GaugeHistogram, Suffix::Bucket) => {}
        _ => return Err(ErrorKind::TypeConflict),
    }
    let chars: usize = labels[ex.labels.0 as usize..ex.labels.1 as usize]
        .iter()
        .map(|l| l.name.chars().count() + l.value.chars().count())
        .sum();
    if chars > 128 {
        return Err(ErrorKind::Label);
    }
    Ok(())
}

fn labels_hash_without_le(labels: &[Label<'_>]) -> u64 {
    let mut acc = 0u64;
    for l in labels {
        if l.name != "le" {
            acc = acc.wrapping_add(label_hash(l));
        }
    }
    acc
}

/// One labelled series of a histogram family, buckets sorted by `le`, counts cumulative as
/// exposed.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSeries<'e> {
    /// The labels without `le`.
    pub labels: Vec<(&'e str, &'e str)>,
    pub buckets: Vec<(f64, f64)>,
    pub sum: Option<f64>,
    pub count: Option<f64>,
    pub created: Option<f64>,
}

/// A histogram sample without a usable `le`, or with a suffix histograms do not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHistogram;

/// Groups a histogram family's samples by label set (without `le`). `Err` when an `le` is
/// missing or not a number.
pub fn group_histograms<'e, 'a: 'e>(
    exp: &'e Exposition<'a>,
    f: &Family<'a>,
) -> Result<Vec<HistogramSeries<'e>>, BadHistogram> {
    let mut out: Vec<HistogramSeries<'e>> = Vec::new();
    // One scratch label list reused for every sample; a series allocates only when it starts.
    let mut scratch: Vec<(&'e str, &'e str)> = Vec::new();
    for s in exp.family_samples(f) {
        let mut le = None;
        scratch.clear();
        for l in exp.sample_labels(s) {
            if l.name == "le" && s.suffix == Suffix::Bucket {
                le = Some(parse_value(l.value.as_ref()).ok_or(BadHistogram)?);
            } else {
                scratch.push((l.name, l.value.as_ref()));
            }
        }
        scratch.sort_unstable();
        let pos = if out.last().is_some_and(|h| h.labels == scratch) {
            out.len() - 1
        } else if let Some(p) = out.iter().position(|h| h.labels == scratch) {
            p
        } else {
            out.push(HistogramSeries {
                labels: scratch.clone(),
                buckets: Vec::with_capacity(32),
                sum: None,
                count: None,
                created: None,
            });
            out.len() - 1
        };
        let h = &mut out[pos];
        match s.suffix {
            Suffix::Bucket => {
                let le = le.ok_or(BadHistogram)?;
                if le.is_nan() {
                    return Err(BadHistogram);
                }
                h.buckets.push((le, s.value));
            }
            Suffix::Sum => h.sum = Some(s.value),
            Suffix::Count => h.count = Some(s.value),
            Suffix::Created => h.created = Some(s.value),
            _ => return Err(BadHistogram),
        }
    }
    for h in &mut out {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

fn split_word(s: &str) -> (&str, &str) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
        i += 1;
    }
    (&s[..i], &s[i..])
}

#[inline]
fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

#[inline]
fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// End of a metric name starting at `i` (== `i` when there is none).
#[inline]
fn scan_name(b: &[u8], i: usize) -> usize {
    if i >= b.len() || !is_name_start(b[i]) {
        return i;
    }
    let mut j = i + 1;
    while j < b.len() && is_name_char(b[j]) {
        j += 1;
    }
    j
}

/// True for a legal metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(s: &str) -> bool {
    !s.is_empty() && scan_name(s.as_bytes(), 0) == s.len()
}

/// True for a legal label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn valid_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

#[inline]
fn token(line: &str, i: usize) -> (&str, usize) {
    let b = line.as_bytes();
    let mut j = i;
    while j < b.len() && b[j] != b' ' && b[j] != b'\t' {
        j += 1;
    }
    (&line[i..j], j)
}

/// Parses a sample value, `le`/`quantile` or timestamp: Go `ParseFloat` syntax as far as
/// expositions use it (`NaN`, `+Inf`, `-Inf`, `Inf`, decimals, exponents).
pub fn parse_value(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    // Fast path: a plain non-negative integer, optionally with ".0" (the common case).
    let mut v: u64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() && i < 15 {
        v = v * 10 + u64::from(b[i] - b'0');
        i += 1;
    }
    if i > 0 && (i == b.len() || (&b[i..] == b".0")) {
        return Some(v as f64);
    }
    match b[0] {
        b'+' | b'-' | b'.' | b'0'..=b'9' | b'N' | b'n' | b'I' | b'i' => {}
        _ => return None,
    }
    // Rust accepts "inf", "infinity", "nan" in any case with an optional sign, as Go does.
    // It also accepts nothing Go would reject except a leading '+' on NaN, which is harmless.
    s.parse::<f64>().ok()
}

/// Parses `name="value",...}` starting after `{`; returns the index after `}`. `strict`
/// (OpenMetrics): no trailing comma, and only the `\\`, `\"`, `\n` escapes; otherwise (0.0.4,
/// as Prometheus reads it) a backslash before another character is kept as written.
fn parse_labels<'a>(
    line: &'a str,
    mut i: usize,
    out: &mut Vec<Label<'a>>,
    strict: bool,
) -> Result<usize, ErrorKind> {
    let b = line.as_bytes();
    let mut first = true;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            None => return Err(ErrorKind::Label),
            Some(b'}') if first || !strict => return Ok(i + 1),
            _ => {}
        }
        first = false;
        let ns = i;
        if !(b[i].is_ascii_alphabetic() || b[i] == b'_') {
            return Err(ErrorKind::Label);
        }
        i += 1;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let lname = &line[ns..i];
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'=') {
            return Err(ErrorKind::Label);
        }
        i = skip_ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return Err(ErrorKind::Label);
        }
        i += 1;
        let vs = i;
        // Find the closing quote, noting escapes.
        let mut escaped = false;
        // Values are short: a plain loop beats a vectorised search here.
        loop {
            match b.get(i) {
                None => return Err(ErrorKind::Label),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                    if i > b.len() {
                        return Err(ErrorKind::Label);
                    }
                }
                Some(_) => i += 1,
            }
        }
        let raw = &line[vs..i];
        let value = if escaped {
            Cow::Owned(unescape_label(raw, strict).ok_or(ErrorKind::Label)?)
        } else {
            Cow::Borrowed(raw)
        };
        out.push(Label { name: lname, value });
        i = skip_ws(b, i + 1);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            _ => return Err(ErrorKind::Label),
        }
    }
}

fn unescape_label(raw: &str, strict: bool) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                _ if strict => return None,
                o => {
                    out.push('\\');
                    out.push(o);
                }
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn unescape_help(raw: &str) -> Cow<'_, str> {
    if memchr::memchr(b'\\', raw.as_bytes()).is_none() {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') => out.push('"'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn parse_exemplar<'a>(
    line: &'a str,
    i: usize,
    labels: &mut Vec<Label<'a>>,
    strict: bool,
) -> Result<Exemplar, ErrorKind> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, i);
    if b.get(i) != Some(&b'{') {
        return Err(ErrorKind::Syntax);
    }
    let ls = labels.len() as u32;
    i = parse_labels(line, i + 1, labels, strict)?;
    let le = labels.len() as u32;
    let ws = skip_ws(b, i);
    if ws == i {
        return Err(ErrorKind::Syntax);
    }
    let (vtok, after) = token(line, ws);
    let value = parse_value(vtok).ok_or(ErrorKind::Value)?;
    let i = skip_ws(b, after);
    let mut timestamp = None;
    if i < b.len() {
        let (ttok, after) = token(line, i);
        timestamp = Some(parse_value(ttok).ok_or(ErrorKind::Timestamp)?);
        if skip_ws(b, after) != b.len() {
            return Err(ErrorKind::Syntax);
        }
    }
    Ok(Exemplar {
        labels: (ls, le),
        value,
        timestamp,
    })
}

/// An order-independent hash of a series identity (FNV-1a per label, summed).
fn series_hash(name: &str, labels: &[Label<'_>]) -> u64 {
    let mut acc = 0u64;
    for l in labels {
        acc = acc.wrapping_add(label_hash(l));
    }
    mix(bytes_hash(0x243f_6a88_85a3_08d3, name.as_bytes()) ^ acc)
}

/// Hash of one label (combined by addition, so label order does not matter).
#[inline]
fn label_hash(l: &Label<'_>) -> u64 {
    let h = bytes_hash(0x1319_8a2e_0370_7344, l.name.as_bytes());
    mix(bytes_hash(h, l.value.as_bytes())) | 1
}

#[inline]
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// A small multiply-xorshift hash eight bytes at a time (not DoS-resistant; only duplicate
/// detection within one body depends on it, and collisions are confirmed by comparison).
#[inline]
fn bytes_hash(mut h: u64, b: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
        h ^= h >> 29;
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(w) ^ ((b.len() as u64) << 56)).wrapping_mul(K);
    h ^ (h >> 29)
}

fn same_label_set(a: &[Label<'_>], b: &[Label<'_>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| y.name == x.name && y.value == x.value))
}

// ---------------------------------------------------------------------------------------------
// Rendering (for round trips, the fuzz harness and tests).

/// Writes a float the way expositions do (`NaN`, `+Inf`, `-Inf`, shortest round-trip digits).
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// Escapes a label value (`\\`, `\"`, `\n`).
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[Label<'_>]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(l.name);
        out.push_str("=\"");
        escape_label_value(out, &l.value);
        out.push('"');
    }
    out.push('}');
}

/// Renders an exposition back to text in its own format (damaged families included as they
/// were kept). Parsing the result gives the same families and samples.
pub fn render(exp: &Exposition<'_>) -> String {
    let mut out = String::with_capacity(exp.samples.len() * 64);
    for f in &exp.families {
        if let Some(h) = &f.help {
            out.push_str("# HELP ");
            out.push_str(f.name);
            out.push(' ');
            for c in h.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('\n');
        }
        if f.typed {
            out.push_str("# TYPE ");
            out.push_str(f.name);
            out.push(' ');
            out.push_str(f.typ.as_str(exp.format));
            out.push('\n');
        }
        if let Some(u) = f.unit {
            out.push_str("# UNIT ");
            out.push_str(f.name);
            out.push(' ');
            out.push_str(u);
            out.push('\n');
        }
        for s in exp.family_samples(f) {
            out.push_str(s.name);
            write_labels(&mut out, exp.sample_labels(s));
            out.push(' ');
            write_value(&mut out, s.value);
            if let Some(t) = s.timestamp {
                out.push(' ');
                write_value(&mut out, t);
            }
            if let Some(ex) = &s.exemplar {
                out.push_str(" # ");
                let ls = &exp.labels[ex.labels.0 as usize..ex.labels.1 as usize];
                out.push('{');
                for (i, l) in ls.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(l.name);
                    out.push_str("=\"");
                    escape_label_value(&mut out, &l.value);
                    out.push('"');
                }
                out.push_str("} ");
                write_value(&mut out, ex.value);
                if let Some(t) = ex.timestamp {
                    out.push(' ');
                    write_value(&mut out, t);
                }
            }
            out.push('\n');
        }
    }
    if exp.format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_style_counter_histogram_and_created() {
        let body = "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
# TYPE vllm:prompt_tokens_total counter\n\
vllm:prompt_tokens_total{engine=\"0\",model_name=\"tiny\"} 11815.0\n\
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.\n\
# TYPE vllm:prompt_tokens_created gauge\n\
vllm:prompt_tokens_created{engine=\"0\",model_name=\"tiny\"} 1.795851424336865e+09\n\
# TYPE vllm:iteration_tokens_total histogram\n\
vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"1.0\",model_name=\"tiny\"} 3.0\n\
vllm:iteration_tokens_total_bucket{engine=\"0\",le=\"+Inf\",model_name=\"tiny\"} 5.0\n\
vllm:iteration_tokens_total_count{engine=\"0\",model_name=\"tiny\"} 5.0\n\
vllm:iteration_tokens_total_sum{engine=\"0\",model_name=\"tiny\"} 13620.0\n";
        let e = parse(body, Format::Prometheus);
        assert_eq!(e.error_total(), 0, "{:?}", e.errors);
        assert_eq!(e.families.len(), 3);
        assert_eq!(e.families[0].base_name(), "vllm:prompt_tokens");
        assert_eq!(e.families[0].typ, MetricType::Counter);
        assert_eq!(e.samples[0].value, 11815.0);
        assert_eq!(e.families[1].typ, MetricType::Gauge);
        let h = &e.families[2];
        assert_eq!(h.typ, MetricType::Histogram);
        assert_eq!(h.len(), 4);
        let g = group_histograms(&e, h).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].buckets, vec![(1.0, 3.0), (f64::INFINITY, 5.0)]);
        assert_eq!(g[0].sum, Some(13620.0));
        assert_eq!(g[0].labels, vec![("engine", "0"), ("model_name", "tiny")]);
    }

    #[test]
    fn openmetrics_counter_info_exemplar_unit_eof() {
        let body = "# TYPE foo_seconds counter\n# UNIT foo_seconds seconds\n\
# HELP foo_seconds A \\\"help\\\".\n\
foo_seconds_total{a=\"x\"} 1.5 # {trace_id=\"abc\"} 0.5 123.25\n\
foo_seconds_created{a=\"x\"} 1.7e9\n# TYPE bar info\nbar_info{version=\"1\"} 1\n# EOF\n";
        let e = parse(body, Format::OpenMetrics);
        assert_eq!(e.error_total(), 0, "{:?}", e.errors);
        assert!(e.saw_eof);
        let f = &e.families[0];
        assert_eq!(
            (f.name, f.base_name(), f.unit),
            ("foo_seconds", "foo_seconds", Some("seconds"))
        );
        assert_eq!(f.help.as_deref(), Some("A \"help\"."));
        let s = e.samples[0];
        assert_eq!(s.suffix, Suffix::Total);
        let ex = s.exemplar.unwrap();
        assert_eq!((ex.value, ex.timestamp), (0.5, Some(123.25)));
        assert_eq!(e.labels[ex.labels.0 as usize].value, "abc");
        assert_eq!(e.samples[1].suffix, Suffix::Created);
        assert_eq!(e.families[1].typ, MetricType::Info);
        assert_eq!(e.samples[2].suffix, Suffix::Info);
    }

    #[test]
    fn escapes_specials_crlf_timestamps_and_underscore_labels() {
        let body = "a{_x=\"q\\\"\\\\\\n\",b=\"}{,\"} NaN 1700000000000\r\n\r\nb +Inf\nc -Inf\n# just a comment\nd{} 1e-3\t \n";
        let e = parse(body, Format::Prometheus);
        assert_eq!(e.error_total(), 0, "{:?}", e.errors);
        assert_eq!(e.samples.len(), 4);
        assert!(e.samples[0].value.is_nan());
        assert_eq!(e.samples[0].timestamp, Some(1.7e12));
        assert_eq!(e.sample_labels(&e.samples[0])[0].name, "_x");
        assert_eq!(e.sample_labels(&e.samples[0])[0].value, "q\"\\\n");
        assert_eq!(e.sample_labels(&e.samples[0])[1].value, "}{,");
        assert_eq!(e.samples[1].value, f64::INFINITY);
        assert_eq!(e.samples[2].value, f64::NEG_INFINITY);
        assert_eq!(e.samples[3].value, 0.001);
        // Rendering and parsing again gives the same samples.
        let again = render(&e);
        let e2 = parse(&again, Format::Prometheus);
        assert_eq!(e2.samples.len(), 4);
        assert_eq!(
            e2.sample_labels(&e2.samples[0]),
            e.sample_labels(&e.samples[0])
        );
    }

    #[test]
    fn errors_are_counted_and_damage_only_their_family() {
        let body = "# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\nok 1\nbad{a=1} 2\nzz 1 notatime\n\
v abc\n!!!\n# TYPE ok counter\n";
        let e = parse(body, Format::Prometheus);
        let counts: Vec<_> = e.error_counts().collect();
        assert!(
            counts.contains(&(ErrorKind::DuplicateSeries, 1)),
            "{counts:?}"
        );
        assert!(counts.contains(&(ErrorKind::Label, 1)), "{counts:?}");
        assert!(counts.contains(&(ErrorKind::Timestamp, 1)), "{counts:?}");
        assert!(counts.contains(&(ErrorKind::Value, 1)), "{counts:?}");
        assert!(counts.contains(&(ErrorKind::Syntax, 1)), "{counts:?}");
        assert!(counts.contains(&(ErrorKind::TypeConflict, 1)), "{counts:?}");
        assert!(e.fatal().is_none());
        let g = e.families.iter().find(|f| f.name == "g").unwrap();
        assert!(g.damaged);
        let ok = e.families.iter().find(|f| f.name == "ok").unwrap();
        assert!(ok.damaged, "TYPE after samples damages the family");
    }

    #[test]
    fn body_level_failures() {
        assert_eq!(
            parse("<!doctype html><html>oops</html>\n", Format::Prometheus).fatal(),
            Some(ErrorKind::ContentType)
        );
        assert_eq!(
            parse("a 1\nb 2", Format::Prometheus).fatal(),
            Some(ErrorKind::Truncated)
        );
        assert_eq!(
            parse("a 1\n", Format::OpenMetrics).fatal(),
            Some(ErrorKind::Truncated)
        );
        assert_eq!(
            parse("\n# c\n", Format::Prometheus).fatal(),
            Some(ErrorKind::Empty)
        );
        assert_eq!(
            parse_bytes(b"a 1\n\xff\n", Format::Prometheus).fatal(),
            Some(ErrorKind::Encoding)
        );
        let e = parse("a 1\n# EOF\nb 2\n", Format::OpenMetrics);
        assert_eq!(
            e.error_counts().collect::<Vec<_>>(),
            vec![(ErrorKind::AfterEof, 1)]
        );
    }

    #[test]
    fn histogram_rules() {
        let no_inf = "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n";
        let e = parse(no_inf, Format::Prometheus);
        assert!(e.families[0].damaged);
        let decreasing = "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n";
        assert!(parse(decreasing, Format::Prometheus).families[0].damaged);
        let split = "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nx 1\nh_sum 1\n";
        let e = parse(split, Format::Prometheus);
        assert_eq!(
            e.error_counts().collect::<Vec<_>>(),
            vec![(ErrorKind::TypeConflict, 1)]
        );
    }

    /// The three OpenMetrics rules 0.0.4 does not have: each flags (damages) only its own
    /// family, with the fitting kind, and the same body parsed as 0.0.4 has no error.
    #[test]
    fn openmetrics_only_counter_unit_and_count_rules() {
        for (body, kind) in [
            ("# TYPE c counter\nc_total -1\n", ErrorKind::Value),
            ("# TYPE c counter\nc_total NaN\n", ErrorKind::Value),
            (
                "# TYPE c counter\nc_total 1\nc_created NaN\n",
                ErrorKind::Value,
            ),
            (
                "# TYPE c gauge\n# UNIT c seconds\nc 1\n",
                ErrorKind::Metadata,
            ),
            (
                "# TYPE c_xseconds gauge\n# UNIT c_xseconds seconds\nc_xseconds 1\n",
                ErrorKind::Metadata,
            ),
            (
                "# TYPE c histogram\nc_bucket{le=\"+Inf\"} 2\nc_count 1\nc_sum 0\n",
                ErrorKind::Histogram,
            ),
            (
                "# TYPE c gaugehistogram\nc_bucket{le=\"+Inf\"} 2\nc_gcount 3\n",
                ErrorKind::Histogram,
            ),
        ] {
            let om = format!("# TYPE ok gauge\nok 1\n{body}# TYPE after gauge\nafter 2\n# EOF\n");
            let e = parse(&om, Format::OpenMetrics);
            assert_eq!(
                e.error_counts().collect::<Vec<_>>(),
                vec![(kind, 1)],
                "{body}"
            );
            for f in &e.families {
                assert_eq!(f.damaged, f.name.starts_with('c'), "{body}: {}", f.name);
            }
            assert_eq!(
                e.samples
                    .iter()
                    .filter(|s| s.name == "ok" || s.name == "after")
                    .count(),
                2
            );
            let prom = format!("{body}ok 1\n");
            let e = parse(&prom, Format::Prometheus);
            assert_eq!(e.error_total(), 0, "0.0.4 {body}: {:?}", e.errors);
        }
        // What stays legal in OpenMetrics: +Inf totals, a _created before the epoch, an empty
        // unit, a histogram without _count, a matching count.
        let ok = "# TYPE c counter\nc_total +Inf\nc_created -5\n# TYPE u gauge\n# UNIT u\nu 1\n\
# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\n# TYPE g histogram\ng_bucket{le=\"+Inf\"} 2\ng_count 2\n# EOF\n";
        let e = parse(ok, Format::OpenMetrics);
        assert_eq!(e.error_total(), 0, "{:?}", e.errors);
    }

    #[test]
    fn values() {
        for (s, v) in [
            ("0", 0.0),
            ("28.0", 28.0),
            ("1.5", 1.5),
            ("-2", -2.0),
            ("1e3", 1000.0),
            ("+Inf", f64::INFINITY),
            ("Inf", f64::INFINITY),
            ("-inf", f64::NEG_INFINITY),
            ("1.7958514243365703e+09", 1.7958514243365703e9),
            ("123456789012345678", 123456789012345678.0),
        ] {
            assert_eq!(parse_value(s), Some(v), "{s}");
        }
        assert!(parse_value("NaN").unwrap().is_nan());
        for bad in ["", "abc", "1,5", "0x", "--1", "1.2.3"] {
            assert_eq!(parse_value(bad), None, "{bad}");
        }
    }
}
