//! The release binaries as child processes: each logs to its own file in the run
//! directory, and its pid is appended to `pids` there so that the wrapper script can kill
//! whatever is left should this process itself die.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::Res;

/// Where the binaries are and what every child gets in its environment.
pub struct Launcher {
    pub bin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Variables shared by the api and the workers (secrets).
    pub common_env: Vec<(String, String)>,
    pub api_database_url: String,
    pub worker_database_url: String,
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
}

impl Proc {
    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub async fn sigkill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    pub fn sigterm(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }
}

impl Launcher {
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.run_dir.join("logs").join(format!("{name}.log"))
    }

    fn spawn(&self, bin: &str, args: &[&str], name: &str, env: &[(&str, String)]) -> Res<Proc> {
        std::fs::create_dir_all(self.run_dir.join("logs"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))?;
        let path = self.bin_dir.join(bin);
        if !path.exists() {
            return Err(format!(
                "{} is missing: build it with `cargo build --release --bins --locked`",
                path.display()
            )
            .into());
        }
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // No .env of a developer's checkout is read: the run directory has none.
            .current_dir(&self.run_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (k, v) in &self.common_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut pids = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join("pids"))?;
        writeln!(pids, "{pid}")?;
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
        })
    }

    pub fn start_api(&self, name: &str, port: u16) -> Res<Proc> {
        self.spawn(
            "autokey-api",
            &["serve"],
            name,
            &[
                ("DATABASE_URL", self.api_database_url.clone()),
                ("PORT", port.to_string()),
                ("BIND_ADDR", "127.0.0.1".into()),
                ("SIMULATED_PAYMENTS", "true".into()),
            ],
        )
    }

    /// `name` also prefixes the worker's queue identities (`WORKER_NAME`), so its
    /// heartbeats can be found in `apalis.workers`.
    pub fn start_worker(&self, name: &str) -> Res<Proc> {
        self.spawn(
            "autokey-worker",
            &["run"],
            name,
            &[
                ("DATABASE_URL", self.worker_database_url.clone()),
                ("WORKER_NAME", name.to_string()),
            ],
        )
    }

    /// Runs `autokey-api <args>` to completion and returns its stdout.
    pub async fn api_command(&self, args: &[&str]) -> Res<String> {
        let out = Command::new(self.bin_dir.join("autokey-api"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.worker_database_url)
            .current_dir(&self.run_dir)
            .output()
            .await?;
        if !out.status.success() {
            return Err(format!(
                "autokey-api {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `GET {base}/readyz` answers 200, the process is alive, or `limit` passes.
pub async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    proc: &mut Proc,
    log: &Path,
    limit: Duration,
) -> Res<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = proc.exited() {
            return Err(format!(
                "{} exited at start ({status}); see {}",
                proc.name,
                log.display()
            )
            .into());
        }
        if let Ok(r) = http
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} was not ready within {limit:?}", proc.name).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
