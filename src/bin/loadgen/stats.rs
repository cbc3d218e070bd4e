//! Measurements: latency percentiles and the server's CPU time and memory
//! read from /proc.

/// Latency summary in microseconds.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Summarizes latencies (microseconds); sorts in place.
pub fn latency(samples: &mut [u64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Latency {
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: *samples.last().unwrap_or(&0),
    }
}

/// Clock ticks per second of /proc stat times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds (user + system) used so far by process `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).collect();
        let l = latency(&mut v);
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (51, 99, 100));
        assert_eq!(latency(&mut []).max_us, 0);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_kib(pid).unwrap() > 0);
    }
}
