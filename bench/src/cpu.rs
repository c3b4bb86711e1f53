//! CPU time a process has used, from `/proc/<pid>/stat`.
//!
//! CPU per output token says what a serving layer costs beside the engine,
//! which tokens/s alone cannot. On CPU-only hosts the engines keep every core
//! busy while they generate (rayon spins before it parks), so there it tracks
//! wall time; on a GPU host it is the host-side cost per token.

use std::{fs, io};

/// `/proc` reports utime and stime in USER_HZ, which the kernel fixes at 100
/// for userspace on every architecture Backhaul builds for (x86_64, aarch64).
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds of every thread of `pid` so far.
pub fn seconds(pid: u32) -> io::Result<f64> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat"))?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no utime/stime fields"),
        )
    })
}

/// Fields 14 and 15 (utime, stime) of a stat line. The command name (field
/// 2) is in parentheses and may hold spaces or parentheses itself, so the
/// fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; utime is field 14.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_after_a_name_with_spaces_and_parens() {
        let line = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 2000 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(line), Some(12.9));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let pid = std::process::id();
        let before = seconds(pid).unwrap();
        // Burn measurable CPU (more than one 10 ms tick).
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(60);
        let mut x = 0u64;
        while std::time::Instant::now() < deadline {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(seconds(pid).unwrap() > before);
    }

    #[test]
    fn a_truncated_line_is_an_error_not_zero() {
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
    }
}
