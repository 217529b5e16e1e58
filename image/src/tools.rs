//! The one place that runs external tools (`apt-get`, `apt-cache`, `dpkg-deb`, `cargo`). Every
//! command line is logged before it runs and is part of the error when it fails.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ImageError;

/// The command line of `cmd`, for logs and errors.
pub fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` (in `dir` when given), log its command line, return its stdout. A non-zero exit is
/// an error naming the command and carrying its stderr.
pub fn run(mut cmd: Command, dir: Option<&Path>) -> Result<String, ImageError> {
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let line = command_line(&cmd);
    eprintln!("  + {line}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| ImageError::Tool {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            command: line,
            detail: format!(
                "{}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`], but the tool's stderr goes to ours (long builds show progress).
pub fn run_visible(mut cmd: Command) -> Result<(), ImageError> {
    let line = command_line(&cmd);
    eprintln!("  + {line}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| ImageError::Tool {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    if !status.success() {
        return Err(ImageError::Tool {
            command: line,
            detail: status.to_string(),
        });
    }
    Ok(())
}

/// `cmd PROGRAM ARGS...`
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}
