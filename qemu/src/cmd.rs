//! The one place the lab runs external tools (`ip`, `tc`, `nft`, ...). Every command line is
//! logged when `SITELINK_LAB_VERBOSE` is set and is part of the error when the command fails.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// A failed external command.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run `{cmdline}`: {source} (is it installed?)")]
    Spawn {
        cmdline: String,
        source: std::io::Error,
    },
    #[error("`{cmdline}` failed ({status}): {stderr}")]
    Failed {
        cmdline: String,
        status: String,
        stderr: String,
    },
}

/// Render a command line for logs and errors.
pub fn cmdline<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        let a = a.as_ref().to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'', ';', '{', '}']) {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

fn verbose() -> bool {
    std::env::var_os("SITELINK_LAB_VERBOSE").is_some()
}

/// Run `program args...`, capturing output; Ok(stdout) on exit status 0.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, CmdError> {
    let line = cmdline(program, args);
    if verbose() {
        eprintln!("+ {line}");
    }
    // Its own process group: a second Ctrl-C at the terminal must not kill the `ip` commands
    // that take the lab down after the first.
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|source| CmdError::Spawn {
            cmdline: line.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CmdError::Failed {
            cmdline: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Run a command inside network namespace `ns` (`ip netns exec NS program args...`).
pub fn run_in<S: AsRef<OsStr>>(ns: &str, program: &str, args: &[S]) -> Result<String, CmdError> {
    let mut all: Vec<&OsStr> = vec![
        OsStr::new("netns"),
        OsStr::new("exec"),
        OsStr::new(ns),
        OsStr::new(program),
    ];
    all.extend(args.iter().map(AsRef::as_ref));
    run("ip", &all)
}

/// `ip -n NS args...`: an `ip` command inside a namespace without forking a shell per command.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String, CmdError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Feed a script to `nft -f -` inside namespace `ns`, atomically.
pub fn nft_in(ns: &str, script: &str) -> Result<(), CmdError> {
    use std::io::Write;
    let args = ["netns", "exec", ns, "nft", "-f", "-"];
    let line = format!("{} <<< {script:?}", cmdline("ip", &args));
    if verbose() {
        eprintln!("+ {line}");
    }
    let mut child = Command::new("ip")
        .args(args)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmdline: line.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
        cmdline: line.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CmdError::Failed {
            cmdline: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
