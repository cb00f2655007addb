//! Ask CRI-O to re-read its configuration: `systemctl reload crio` or SIGHUP.
//!
//! Owns the choice of mechanism and the lookup of the CRI-O process. It does not decide
//! whether a reload is needed ([`super::pins`]) and it cannot tell whether the reload worked:
//! `systemctl reload crio` sends SIGHUP to the main PID and returns before CRI-O is done,
//! and its exit code says nothing about the outcome (field-notes, "Reload"). Success is
//! established by asking the CRI ([`super::confirm`]).
//!
//! # Decisions
//! - On releases whose reload mishandles pins (the caller says so: `restart_needed`), `auto`
//!   restarts CRI-O with `systemctl restart crio`. Without systemd running CRI-O there is no
//!   way to restart a daemon pinbundle did not start (its supervisor, environment and
//!   arguments are someone else's): that is an error that gives the command to run.
//! - `auto` uses systemd when it is PID 1 (`/run/systemd/system` exists) AND
//!   `systemctl is-active crio` prints `active`; otherwise it signals the process.
//! - The process is found by `/proc/<pid>/comm == "crio"`. Several matches are an error
//!   (naming every PID) rather than signalling them all: a second `crio` is unexpected
//!   (another instance, a test daemon) and a stray SIGHUP is not ours to send.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The systemd unit of CRI-O.
pub const CRIO_UNIT: &str = "crio";
/// `/proc/<pid>/comm` of the CRI-O daemon.
pub const CRIO_COMM: &str = "crio";

/// How to make CRI-O re-read `crio.conf.d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReloadMode {
    /// systemd if it runs CRI-O, else SIGHUP to the `crio` process.
    #[default]
    Auto,
    /// `systemctl reload crio`.
    Systemd,
    /// SIGHUP to the `crio` process.
    Signal,
    /// `systemctl restart crio`.
    Restart,
    /// Do nothing; report the command the user should run.
    None,
}

/// Where to look for things; production uses [`ReloadEnv::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadEnv {
    /// The procfs mount, `/proc`.
    pub proc_root: PathBuf,
    /// Exists when systemd is PID 1: `/run/systemd/system`.
    pub systemd_marker: PathBuf,
    /// The `systemctl` program.
    pub systemctl: PathBuf,
    /// Signal exactly this PID instead of searching `/proc` (tests, `--crio-pid`).
    pub pid: Option<i32>,
}

impl Default for ReloadEnv {
    fn default() -> Self {
        ReloadEnv {
            proc_root: PathBuf::from("/proc"),
            systemd_marker: PathBuf::from("/run/systemd/system"),
            systemctl: PathBuf::from("systemctl"),
            pid: None,
        }
    }
}

/// What was done. None of these means the new configuration is active yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// `systemctl reload crio` exited 0 (the signal was sent).
    Systemd,
    /// SIGHUP was sent to this PID.
    Signalled { pid: i32 },
    /// `systemctl restart crio` exited 0.
    Restarted,
    /// Mode `none`: the user must run `command`.
    Skipped { command: String },
}

/// Why no reload request could be made. Each variant names what was tried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    #[error("could not run `{program} {args}`")]
    Spawn {
        program: String,
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} {args}` failed ({status}): {stderr}")]
    CommandFailed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("could not list processes in `{path}`")]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no running CRI-O process found (no `{proc_root}/*/comm` is \"crio\"){systemd}",
        proc_root = proc_root.display()
    )]
    NotRunning { proc_root: PathBuf, systemd: String },
    #[error(
        "several processes are named \"crio\" (PIDs {}); name the one to signal, or use `--reload=systemd`",
        pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous { pids: Vec<i32> },
    #[error(
        "CRI-O must be restarted, but systemd does not run it ({why}); pinbundle cannot restart a process it did not start. Run: {command}"
    )]
    CannotRestart { why: String, command: String },
    #[error("could not send SIGHUP to CRI-O (PID {pid})")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// Ask CRI-O to reload its configuration.
///
/// # Errors
/// The mechanism could not be used at all (see [`ReloadError`]).
pub fn reload(mode: ReloadMode, env: &ReloadEnv) -> Result<ReloadOutcome, ReloadError> {
    reload_or_restart(mode, env, false)
}

/// [`reload`], or, when `restart_needed` (a release whose reload mishandles pins) and the
/// mode is `auto`, a restart: `systemctl restart crio` when systemd runs CRI-O, else
/// [`ReloadError::CannotRestart`] with the command to run.
///
/// # Errors
/// As [`reload`]; [`ReloadError::CannotRestart`].
pub fn reload_or_restart(
    mode: ReloadMode,
    env: &ReloadEnv,
    restart_needed: bool,
) -> Result<ReloadOutcome, ReloadError> {
    match mode {
        ReloadMode::None if restart_needed => Ok(ReloadOutcome::Skipped {
            command: format!("systemctl restart {CRIO_UNIT}"),
        }),
        ReloadMode::None => Ok(ReloadOutcome::Skipped {
            // One command a person can paste (a shell comment inside backticks could not be).
            command: format!("systemctl reload {CRIO_UNIT}"),
        }),
        ReloadMode::Systemd => systemd_reload(env),
        ReloadMode::Signal => signal(env),
        ReloadMode::Restart => systemd_restart(env),
        ReloadMode::Auto if restart_needed => {
            if !env.systemd_marker.exists() {
                return Err(cannot_restart(
                    env,
                    format!("`{}` is missing", env.systemd_marker.display()),
                ));
            }
            if !systemd_active(env) {
                return Err(cannot_restart(
                    env,
                    format!("`systemctl is-active {CRIO_UNIT}` is not \"active\""),
                ));
            }
            systemd_restart(env)
        }
        ReloadMode::Auto => {
            if env.systemd_marker.exists() && systemd_active(env) {
                systemd_reload(env)
            } else {
                signal(env).map_err(|e| match e {
                    ReloadError::NotRunning { proc_root, .. } => ReloadError::NotRunning {
                        proc_root,
                        systemd: if env.systemd_marker.exists() {
                            format!("; `systemctl is-active {CRIO_UNIT}` is not \"active\"")
                        } else {
                            format!(
                                "; systemd is not running (`{}` is missing)",
                                env.systemd_marker.display()
                            )
                        },
                    },
                    other => other,
                })
            }
        }
    }
}

/// Whether systemd reports the CRI-O unit active.
pub(crate) fn systemd_active(env: &ReloadEnv) -> bool {
    Command::new(&env.systemctl)
        .args(["is-active", CRIO_UNIT])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "active")
}

/// The error for a restart without systemd, with the exact command when the process and
/// its command line can be found.
fn cannot_restart(env: &ReloadEnv, why: String) -> ReloadError {
    let pid = env
        .pid
        .or_else(|| match find_crio(&env.proc_root).ok()?.as_slice() {
            [one] => Some(*one),
            _ => None,
        });
    let cmdline = pid.and_then(|pid| {
        let raw = fs_err::read(env.proc_root.join(pid.to_string()).join("cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| shell_quote(&String::from_utf8_lossy(a)))
            .collect();
        (!args.is_empty()).then(|| (pid, args.join(" ")))
    });
    let command = match cmdline {
        Some((pid, line)) => format!(
            "`kill {pid}` and start CRI-O again as it was started (`{line}`), then run this load again to confirm"
        ),
        None => {
            "restart CRI-O the way it was started, then run this load again to confirm".to_string()
        }
    };
    ReloadError::CannotRestart { why, command }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn systemd_reload(env: &ReloadEnv) -> Result<ReloadOutcome, ReloadError> {
    systemctl(env, "reload").map(|()| ReloadOutcome::Systemd)
}

/// `systemctl restart crio`: systemd stops CRI-O and starts it again; CRI-O reads its whole
/// configuration at start, which every release gets right.
fn systemd_restart(env: &ReloadEnv) -> Result<ReloadOutcome, ReloadError> {
    systemctl(env, "restart").map(|()| ReloadOutcome::Restarted)
}

fn systemctl(env: &ReloadEnv, verb: &str) -> Result<(), ReloadError> {
    let program = env.systemctl.display().to_string();
    let args = format!("{verb} {CRIO_UNIT}");
    tracing::info!(program, verb, unit = CRIO_UNIT, "asking systemd");
    let out = Command::new(&env.systemctl)
        .args([verb, CRIO_UNIT])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ReloadError::Spawn {
            program: program.clone(),
            args: args.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(1024)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ReloadError::CommandFailed {
            program,
            args,
            status: out.status.to_string(),
            stderr: tail,
        });
    }
    Ok(())
}

/// PIDs whose `comm` is `crio`, ascending.
///
/// # Errors
/// `proc_root` cannot be listed.
pub fn find_crio(proc_root: &Path) -> Result<Vec<i32>, ReloadError> {
    let entries = fs_err::read_dir(proc_root).map_err(|source| ReloadError::Proc {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Processes come and go: an unreadable comm is simply skipped.
        if let Ok(comm) = fs_err::read_to_string(entry.path().join("comm"))
            && comm.trim_end_matches('\n') == CRIO_COMM
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

fn signal(env: &ReloadEnv) -> Result<ReloadOutcome, ReloadError> {
    let pid = match env.pid {
        Some(pid) => pid,
        None => {
            let pids = find_crio(&env.proc_root)?;
            match pids.as_slice() {
                [] => {
                    return Err(ReloadError::NotRunning {
                        proc_root: env.proc_root.clone(),
                        systemd: String::new(),
                    });
                }
                [one] => *one,
                _ => return Err(ReloadError::Ambiguous { pids }),
            }
        }
    };
    let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| ReloadError::Signal {
        pid,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    tracing::info!(pid, "SIGHUP to crio");
    rustix::process::kill_process(target, rustix::process::Signal::HUP).map_err(|e| {
        ReloadError::Signal {
            pid,
            source: e.into(),
        }
    })?;
    Ok(ReloadOutcome::Signalled { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (pid, comm) in entries {
            fs_err::create_dir_all(d.path().join(pid)).unwrap();
            fs_err::write(d.path().join(pid).join("comm"), format!("{comm}\n")).unwrap();
        }
        fs_err::create_dir_all(d.path().join("self")).unwrap();
        d
    }

    #[test]
    fn finds_only_crio() {
        let p = fake_proc(&[
            ("10", "crio"),
            ("11", "crio-pull"),
            ("12", "conmon"),
            ("9", "crio"),
        ]);
        assert_eq!(find_crio(p.path()).unwrap(), vec![9, 10]);
    }

    #[test]
    fn several_or_none_is_an_error() {
        let p = fake_proc(&[("10", "crio"), ("11", "crio")]);
        let env = ReloadEnv {
            proc_root: p.path().to_path_buf(),
            systemd_marker: p.path().join("no-systemd"),
            ..ReloadEnv::default()
        };
        let e = reload(ReloadMode::Signal, &env).unwrap_err();
        assert!(e.to_string().contains("PIDs 10, 11"), "{e}");
        let p = fake_proc(&[("12", "conmon")]);
        let env = ReloadEnv {
            proc_root: p.path().to_path_buf(),
            systemd_marker: p.path().join("no-systemd"),
            ..ReloadEnv::default()
        };
        let e = reload(ReloadMode::Auto, &env).unwrap_err();
        assert!(matches!(e, ReloadError::NotRunning { .. }));
        assert!(e.to_string().contains("systemd is not running"), "{e}");
    }

    #[test]
    fn restart_without_systemd_says_what_to_run() {
        let p = fake_proc(&[("42", "crio")]);
        fs_err::write(
            p.path().join("42/cmdline"),
            b"/usr/bin/crio\0--config-dir\0/etc/my dir\0",
        )
        .unwrap();
        let env = ReloadEnv {
            proc_root: p.path().to_path_buf(),
            systemd_marker: p.path().join("no-systemd"),
            ..ReloadEnv::default()
        };
        let e = reload_or_restart(ReloadMode::Auto, &env, true).unwrap_err();
        assert!(matches!(e, ReloadError::CannotRestart { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("`kill 42`") && msg.contains("`/usr/bin/crio --config-dir '/etc/my dir'`"),
            "{msg}"
        );
        // Without the need, auto still signals; `none` names the restart.
        assert!(matches!(
            reload_or_restart(ReloadMode::None, &env, true).unwrap(),
            ReloadOutcome::Skipped { command } if command == "systemctl restart crio"
        ));
    }

    #[test]
    fn none_returns_the_command() {
        let out = reload(ReloadMode::None, &ReloadEnv::default()).unwrap();
        assert!(
            matches!(out, ReloadOutcome::Skipped { command } if command.starts_with("systemctl reload crio"))
        );
    }

    #[test]
    fn systemd_failure_names_the_command() {
        // `false` fails like a stopped unit would. (A freshly written script would race with
        // concurrent test forks holding its write fd: ETXTBSY.)
        let env = ReloadEnv {
            systemctl: PathBuf::from("false"),
            ..ReloadEnv::default()
        };
        let e = reload(ReloadMode::Systemd, &env).unwrap_err();
        assert!(matches!(e, ReloadError::CommandFailed { .. }), "{e}");
        assert!(
            e.to_string().starts_with("`false reload crio` failed"),
            "{e}"
        );
        let env = ReloadEnv {
            systemctl: PathBuf::from("/nonexistent/systemctl"),
            ..ReloadEnv::default()
        };
        let e = reload(ReloadMode::Systemd, &env).unwrap_err();
        assert!(matches!(e, ReloadError::Spawn { .. }), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/systemctl reload crio"),
            "{e}"
        );
    }
}
