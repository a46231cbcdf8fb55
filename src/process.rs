//! The standard `process_*` metrics (CPU seconds, resident memory, start time, open fds, threads),
//! read from `/proc/self` at scrape time. prometheus-client has no process collector, and the
//! prober's self-health needs the CPU figure, so this small reader is our own. A leaf module
//! (it names nothing else in the crate), shared by the exporter and the prober.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One reading of this process's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub start_time_seconds: f64,
    pub open_fds: f64,
    pub threads: f64,
}

/// Reads `/proc/self/stat`; `None` where procfs is absent.
pub fn read_self() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat, boot_time(), clock_ticks(), page_size()).map(|mut s| {
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as f64)
            .unwrap_or(0.0);
        s
    })
}

/// Process CPU time (user + system) in seconds, the cheap reading for self-health.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat, 0.0, clock_ticks(), page_size()).map(|s| s.cpu_seconds)
}

fn clock_ticks() -> f64 {
    100.0 // USER_HZ is 100 on every Linux ABI we build for
}

fn page_size() -> f64 {
    4096.0
}

fn boot_time() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0.0)
}

/// Parses the fields after the `(comm)` of `/proc/<pid>/stat`.
fn parse_stat(stat: &str, boot_time: f64, ticks: f64, page: f64) -> Option<ProcessStats> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' : state(0) ppid(1) ... utime(11) stime(12) ... num_threads(17) ... starttime(19) vsize(20) rss(21)
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(ProcessStats {
        cpu_seconds: (num(11)? + num(12)?) / ticks,
        threads: num(17)?,
        start_time_seconds: boot_time + num(19)? / ticks,
        virtual_bytes: num(20)?,
        resident_bytes: num(21)? * page,
        open_fds: 0.0,
    })
}

#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = read_self() else { return Ok(()) };
        use prometheus_client::metrics::MetricType;
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                s.threads,
            ),
        ] {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_comm() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615";
        let s = parse_stat(line, 1_000_000.0, 100.0, 4096.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7.0);
        assert_eq!(s.start_time_seconds, 1_000_010.0);
        assert_eq!(s.virtual_bytes, 123456789.0);
        assert_eq!(s.resident_bytes, 2048.0 * 4096.0);
    }

    #[test]
    fn garbage_is_none() {
        assert!(parse_stat("no parens here", 0.0, 100.0, 4096.0).is_none());
        assert!(parse_stat("1 (x) S 1", 0.0, 100.0, 4096.0).is_none());
    }

    #[test]
    fn reads_this_process() {
        let s = read_self().unwrap();
        assert!(s.resident_bytes > 0.0);
        assert!(s.threads >= 1.0);
    }
}
