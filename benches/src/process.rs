//! The relay under test as a process: its CPU time and memory read from `/proc`, the machine's
//! load average, and a guard that stops it however a run ends.
//!
//! The load tools measure a server they spawned as a separate process (callbridge or a reference
//! such as rtpengine), so that its CPU seconds and PSS are its own and not the generator's; this
//! module is the part of that which knows about Linux processes and nothing about SIP or RTP.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime in `/proc/<pid>/stat`. It is 100 on every
/// Linux architecture this runs on (USER_HZ), so it is hard-coded rather than pulling in libc.
const CLK_TCK: f64 = 100.0;

/// Kills the child (callbridge, rtpengine) however the run ends.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// The child's pid, as `/proc` paths want it.
    pub fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// Stops the child as a service manager would (SIGTERM), so that it drains and writes its
    /// last log lines; killed after 10 s if it has not exited.
    pub fn terminate(mut self) {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dropping kills it.
    }
}

/// utime + stime of a process (`"self"` for this one), in seconds.
pub fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .ok_or("no utime")?;
    let stime: f64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .ok_or("no stime")?;
    Ok((utime + stime) / CLK_TCK)
}

/// Proportional set size of a process, in KiB (`/proc/<pid>/smaps_rollup`): its resident
/// memory with shared pages divided among their users. Kernel socket buffers are not in it.
pub fn pss_kib(pid: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no Pss line in smaps_rollup".to_owned())
}

/// The 1, 5 and 15 minute load averages as `/proc/loadavg` writes them (empty if unreadable):
/// printed with every measurement, since the machine is shared.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(pss_kib("self").unwrap() > 0);
        assert_eq!(loadavg().split(' ').count(), 3);
    }
}
