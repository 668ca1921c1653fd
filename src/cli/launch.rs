//! `kiln train --nproc N`: the N ranks of a data-parallel job on this machine, started as torchrun starts them
//! (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), each the same `kiln
//! train` command without `--nproc`. CPU ranks split the cores (`OMP_NUM_THREADS`, unless set); rank 0 hosts the
//! store on loopback. When a rank fails, the others get a few seconds to report their own error and are then
//! stopped; Ctrl-C stops every rank. The exit status is the first failed rank's.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long the other ranks may take to exit by themselves once one has failed.
const GRACE: Duration = Duration::from_secs(10);

/// The launcher's own flags, which the ranks do not take.
const LAUNCHER_FLAGS: [&str; 2] = ["--nproc", "--dist-timeout"];

/// A rank's command line: the launcher's, without `--nproc N` and `--dist-timeout S` (either spelling).
pub fn rank_command_line(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if LAUNCHER_FLAGS.contains(&arg.as_str()) {
            skip_value = true;
        } else if !LAUNCHER_FLAGS.iter().any(|flag| arg.starts_with(&format!("{flag}="))) {
            out.push(arg.clone());
        }
    }
    out
}

/// Runs the job: `nproc` ranks of this very command line, waited for; an error names the first rank that failed.
pub fn run_ranks(nproc: usize, dist_timeout: Option<Duration>) -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var_os("WORLD_SIZE").is_none(),
        "--nproc starts the ranks itself; this process is already a rank of a job (WORLD_SIZE is set): drop --nproc"
    );
    let exe = std::env::current_exe().context("finding the kiln executable to start the ranks")?;
    let args = rank_command_line(&std::env::args().skip(1).collect::<Vec<_>>());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port on 127.0.0.1 for the job's store")?
        .port();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / nproc).max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    eprintln!("starting {nproc} ranks on 127.0.0.1:{port} ({threads} thread(s) each)");
    let mut children: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut command = Command::new(&exe);
        command
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .env_remove("TORCHELASTIC_RESTART_COUNT");
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", threads.to_string());
        }
        if std::env::var_os("GLOO_SOCKET_IFNAME").is_none() {
            command.env("GLOO_SOCKET_IFNAME", "lo");
        }
        if let Some(timeout) = dist_timeout {
            command.env(kiln_train::engine::data_parallel::TIMEOUT_VAR, timeout.as_secs_f64().to_string());
        }
        match command.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    wait_for_ranks(children, &stop)
}

/// Waits for every rank; once one fails (or Ctrl-C), the rest get [`GRACE`] and are then killed.
fn wait_for_ranks(mut children: Vec<Child>, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<(usize, std::process::ExitStatus)> = None;
    let mut deadline: Option<Instant> = None;
    while status.iter().any(Option::is_none) {
        for (rank, child) in children.iter_mut().enumerate() {
            if status[rank].is_none() {
                if let Some(exit) = child.try_wait().context("waiting for a rank")? {
                    status[rank] = Some(exit);
                    if !exit.success() && first_failure.is_none() {
                        first_failure = Some((rank, exit));
                    }
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            stop_all(&mut children);
            anyhow::bail!("interrupted: every rank was stopped");
        }
        if first_failure.is_some() {
            let at = *deadline.get_or_insert_with(|| Instant::now() + GRACE);
            if Instant::now() >= at {
                stop_all(&mut children);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match first_failure {
        Some((rank, exit)) => {
            anyhow::bail!("rank {rank} of {} failed ({exit}); the other ranks were stopped", children.len())
        }
        None => Ok(()),
    }
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_get_the_command_line_without_the_launchers_flags() {
        let args: Vec<String> =
            ["train", "--nproc", "2", "--epochs", "3", "--nproc=4", "--dist-timeout", "9", "--data", "d"]
                .map(String::from)
                .to_vec();
        assert_eq!(rank_command_line(&args), ["train", "--epochs", "3", "--data", "d"]);
    }
}
