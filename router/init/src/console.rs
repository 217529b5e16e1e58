//! The console: every line tagged with the kernel's uptime and who said it.

use std::io::Write;

/// Seconds since boot (`/proc/uptime`), 0 before /proc is mounted.
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Format one console line.
pub fn format_line(uptime: f64, who: &str, line: &str) -> String {
    format!("[{uptime:9.3}] {who}: {line}\n")
}

/// Print a line on the console as `[  uptime] who: line`, in one write.
pub fn line(who: &str, line: &str) {
    let text = format_line(uptime(), who, line);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// An unadorned line (markers that tests and operators grep for, like `sitelink: ready`).
pub fn marker(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

/// `init: ...`
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line("init", &format!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_are_tagged() {
        assert_eq!(
            super::format_line(3.25, "site", "hello"),
            "[    3.250] site: hello\n"
        );
    }
}
