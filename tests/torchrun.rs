//! torch's own launcher starts kiln unchanged: `torchrun --nproc-per-node 2 --no-python kiln train ...`, with the
//! store hosted by torchrun's agent (`TORCHELASTIC_USE_AGENT_STORE`). With `--max-restarts 1`, a rank killed
//! mid-run makes torchrun restart the job, which finds the run it made in the agent's store and resumes it from
//! `last`; the job ends with the epochs and weights of an uninterrupted `kiln train --nproc 2`.
//!
//! torch comes from the wheel `scripts/deps.sh` downloaded (its CUDA libraries from PyPI: `libtorch_python` needs
//! them to import, even on a CPU), in a throwaway environment; skipped with the reason where it cannot be built,
//! except in CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::PythonEnv;
use kiln_train::engine::read_results;

/// The torch wheel `scripts/deps.sh` keeps, else torch's pin from PyPI.
fn torch_requirement() -> String {
    let deps = std::env::var_os("KILN_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps"));
    let local = std::fs::read_dir(deps.join("wheels")).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("torch-2.11.0-")))
    });
    match local {
        Some(path) => path.to_string_lossy().into_owned(),
        None => "torch==2.11.0".into(),
    }
}

/// The pids of this job's rank `rank` (found by the launch variables torchrun gave it).
fn rank_pids(port: u16, rank: usize) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let has = |v: String| vars.contains(&v);
        if has(format!("MASTER_PORT={port}"))
            && has(format!("RANK={rank}"))
            && has("TORCHELASTIC_USE_AGENT_STORE=True".into())
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn torchrun_launches_kiln_unchanged_and_its_restart_resumes_the_run() {
    let test = "torchrun_launches_kiln_unchanged_and_its_restart_resumes_the_run";
    let requirement = torch_requirement();
    let Some(python) = PythonEnv::create_or_skip(test, "torchrun", &[&requirement]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 3, 0), 8);
    let project = dir.path().to_str().unwrap();
    let args = ["train", "--task", "classify", "--data", data.to_str().unwrap(), "--model", "convnext_atto"];
    let rest = ["--img-size", "32", "--epochs", "6", "--batch", "3", "--workers", "1", "--device", "cpu"];
    let common = [&args[..], &rest, &["--drop-path-rate", "0", "--project", project]].concat();

    let whole = [&common[..], &["--name", "whole", "--nproc", "2"]].concat();
    let out = common::kiln(&whole, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = dir.path().join("torchrun.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port_text = port.to_string();
    let torchrun = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1"];
    let torchrun =
        [&torchrun[..], &["--master-addr", "127.0.0.1", "--master-port", &port_text, "--no-python"]].concat();
    let mut job = Command::new(python.python())
        .args(&torchrun)
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(&common)
        .args(["--name", "cut"])
        .env("OMP_NUM_THREADS", "1")
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env("KILN_DIST_TIMEOUT", "30")
        .current_dir(dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let last = dir.path().join("classify/cut/weights/last.safetensors");
    let started = Instant::now();
    while !last.exists() {
        if started.elapsed() > Duration::from_secs(180) {
            let _ = job.kill();
            panic!("no checkpoint within 180 s: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let victims = rank_pids(port, 1);
    assert_eq!(victims.len(), 1, "one rank 1 under torchrun");
    assert!(Command::new("kill").args(["-9", &victims[0].to_string()]).status().unwrap().success());
    let status = job.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "torchrun's job failed: {text}");
    assert!(text.contains("restart 1 of the job resumes"), "the restart resumed the run: {text}");
    assert_eq!(text.matches("trained 6 epoch(s)").count(), 1, "rank 0 alone reports: {text}");

    let (a, b) = (
        read_results(&dir.path().join("classify/whole/results.csv")).unwrap(),
        read_results(&dir.path().join("classify/cut/results.csv")).unwrap(),
    );
    assert_eq!((a.len(), b.len()), (6, 6));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.train, &x.val), (&y.train, &y.val), "epoch {}", x.epoch);
    }
    let read = |run: &str| -> Vec<(String, tch::Tensor)> {
        let mut t =
            tch::Tensor::read_safetensors(dir.path().join("classify").join(run).join("weights/last.safetensors"))
                .unwrap();
        t.retain(|(name, _)| !name.starts_with("rng."));
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let (wa, wb) = (read("whole"), read("cut"));
    assert_eq!(wa.len(), wb.len());
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        assert!(x.equal(y), "{name} differs from the uninterrupted job's");
    }
    let runs = std::fs::read_dir(dir.path().join("classify")).unwrap().count();
    assert_eq!(runs, 2, "the restart made no second run directory");
}
