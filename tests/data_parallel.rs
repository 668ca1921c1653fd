//! Data-parallel training as a user launches it: `kiln train --nproc 2` (two ranks on loopback, Gloo, one thread
//! each) against one process with the combined batch, on the same samples in the same order. For each task the two
//! runs end with the same weights and optimiser state (to 1e-5), the same training losses and the same validation
//! metrics over the whole split; only rank 0 writes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::engine::{read_results, EpochRecord};
use kiln_train::ocr::synthetic::{write_text_lines, TextLinesSpec};

/// Trains with `args` plus the per-rank `batch` (on `nproc` ranks, or alone on one thread) into `project/<name>`;
/// returns the run directory.
fn train(args: &[&str], project: &Path, name: &str, batch: usize, nproc: Option<usize>) -> PathBuf {
    let batch = batch.to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--batch", &batch, "--project", project.to_str().unwrap(), "--name", name, "--device", "cpu"]);
    // SGD: an update linear in the gradient, so the float noise of summing in another order stays noise (AdamW
    // divides a near-zero gradient by its own size, and the noise becomes a step of up to lr).
    all.extend(["--workers", "1", "--drop-path-rate", "0", "--seed", "5", "--optimizer", "sgd", "--lr", "0.05"]);
    let nproc_text = nproc.map(|n| n.to_string());
    match &nproc_text {
        Some(n) => all.extend(["--nproc", n]),
        None => all.extend(["--threads", "1"]),
    }
    let out = common::kiln(&all, project);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln {}: {stderr}", all.join(" "));
    let task = args[args.iter().position(|a| *a == "--task").unwrap() + 1];
    project.join(task).join(name)
}

/// The checkpoint's tensors but the generators' states (which differ by design: rank 1 draws its own stream).
fn learned(run: &Path) -> BTreeMap<String, tch::Tensor> {
    let path = run.join("weights/last.safetensors");
    tch::Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|(name, _)| !name.starts_with("rng."))
        .collect()
}

fn assert_same_training(single: &Path, ranks: &Path, what: &str) {
    let (a, b) = (learned(single), learned(ranks));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: the same tensors");
    assert!(a.len() > 10, "{what}: {} tensors", a.len());
    // Weights to 1e-5. The optimiser's state (momentum: a sum of raw gradients, up to ~10 here) to 1e-4 of its
    // largest value: float noise of the order of summation, no more (measured: one process on 2 threads differs
    // from itself on 1 thread by 8.8e-5 in the recognizer's head momentum, two ranks by 4.0e-5).
    let mut worst = [(0.0f64, String::new()), (0.0f64, String::new())];
    for (name, x) in &a {
        let y = &b[name];
        assert_eq!(x.size(), y.size(), "{what}: {name}");
        let (x, y) = (x.to_kind(tch::Kind::Double), y.to_kind(tch::Kind::Double));
        let diff = (&x - &y).abs().max().double_value(&[]);
        assert!(!diff.is_nan(), "{what}: {name} differs by NaN");
        let optimizer = name.starts_with("optimizer.");
        let relative = if optimizer { diff / x.abs().max().double_value(&[]).max(1.0) } else { diff };
        let slot = &mut worst[usize::from(optimizer)];
        if relative > slot.0 {
            *slot = (relative, name.clone());
        }
    }
    eprintln!(
        "{what}: the largest differences: weights {:e} ({}), optimiser {:e} ({})",
        worst[0].0, worst[0].1, worst[1].0, worst[1].1
    );
    assert!(worst[0].0 <= 1e-5, "{what}: {} differs by {:e}", worst[0].1, worst[0].0);
    assert!(worst[1].0 <= 1e-4, "{what}: {} differs by {:e} of its largest value", worst[1].1, worst[1].0);

    let (ra, rb) = (records(single), records(ranks));
    assert_eq!(ra.len(), rb.len(), "{what}: epochs in results.csv");
    for (x, y) in ra.iter().zip(&rb) {
        for ((name, u), (_, v)) in x.train.iter().zip(&y.train) {
            assert!((u - v).abs() <= 1e-5 * u.abs().max(1.0), "{what}: epoch {} train {name} {u} vs {v}", x.epoch);
        }
        // Validation of weights equal to float noise: to 1e-4 of the value (measured: weights 8e-6 apart, after two
        // of the recognizer's epochs, moved its val loss by 8e-5 of itself).
        assert_eq!(x.val.len(), y.val.len());
        for ((name, u), (_, v)) in x.val.iter().zip(&y.val) {
            match (u, v) {
                (Some(u), Some(v)) => {
                    assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{what}: epoch {} val {name} {u} vs {v}", x.epoch)
                }
                (None, None) => {}
                _ => panic!("{what}: epoch {} val {name}: {u:?} vs {v:?}", x.epoch),
            }
        }
        assert_eq!(x.skipped_images, y.skipped_images);
    }
    // Rank 0 alone wrote: the same files as one process, in the one run directory.
    let files = |run: &Path| -> Vec<String> {
        let mut names: Vec<String> =
            walk(run).iter().map(|p| p.strip_prefix(run).unwrap().display().to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(files(single), files(ranks), "{what}: the files of the run");
    let siblings = std::fs::read_dir(ranks.parent().unwrap()).unwrap().count();
    assert_eq!(siblings, 2, "{what}: one run directory per run, none made by rank 1");
}

/// The 2-rank run's sharded validation (its last epoch in `results.csv`) against one process evaluating the same
/// weights on the whole split (`kiln val --checkpoint last`): `metric` (a `results.csv` name, at `path` in the
/// report) exactly, the loss to float noise.
fn assert_sharded_validation_is_one_process(ranks: &Path, metric: &str, path: &[&str]) {
    let out =
        common::kiln(&["val", "--run", ranks.to_str().unwrap(), "--checkpoint", "last", "--device", "cpu"], ranks);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ranks.join("val_metrics.json")).unwrap()).unwrap();
    let whole = path.iter().fold(&report["metrics"], |v, key| &v[*key]).as_f64().unwrap();
    let last = records(ranks).pop().unwrap();
    let sharded = last.val(metric).unwrap();
    assert_eq!(sharded, whole, "{metric}: the ranks' shares merged vs one process on the whole split");
    let (a, b) = (last.val("loss").unwrap(), report["loss"].as_f64().unwrap());
    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "val loss {a} vs {b}");
}

fn records(run: &Path) -> Vec<EpochRecord> {
    read_results(&run.join("results.csv")).unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn classification_on_two_ranks_trains_as_one_process_on_the_combined_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (9, 4, 0), 3);
    let data = data.to_str().unwrap();
    let args = ["train", "--task", "classify", "--data", data, "--model", "convnext_atto", "--img-size", "32"];
    let args = [&args[..], &["--epochs", "2"]].concat();
    let single = train(&args, dir.path(), "single", 6, None);
    let ranks = train(&args, dir.path(), "ranks", 3, Some(2));
    assert_same_training(&single, &ranks, "classify");
    assert_sharded_validation_is_one_process(&ranks, "accuracy", &["accuracy"]);
}

#[test]
fn detection_on_two_ranks_trains_as_one_process_with_positives_counted_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (18, 4, 0), size: (96, 64), ..Default::default() })
        .unwrap();
    let data = data.to_str().unwrap();
    let args = ["train", "--task", "detect", "--data", data, "--model", "convnext_atto", "--img-size", "64"];
    let args = [&args[..], &["--epochs", "2"]].concat();
    let single = train(&args, dir.path(), "single", 6, None);
    let ranks = train(&args, dir.path(), "ranks", 3, Some(2));
    assert_same_training(&single, &ranks, "detect");
    assert_sharded_validation_is_one_process(&ranks, "map", &["coco", "map"]);
}

#[test]
fn text_recognition_on_two_ranks_trains_as_one_process_on_the_combined_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lines");
    write_text_lines(&data, &TextLinesSpec { lines: (16, 6, 0), length: (2, 4), ..TextLinesSpec::default() }).unwrap();
    let data = data.to_str().unwrap();
    let args = ["train", "--task", "ocr", "--data", data, "--ocr-backbone", "convnext", "--model", "convnext_atto"];
    // One epoch (4 steps): the recognizer's head drifts further with each step (weights 2.4e-7 apart after one
    // epoch, 8.1e-6 after two), and the bound should not depend on this CPU's noise.
    let rest = ["--epochs", "1", "--ocr-h", "32", "--ocr-w", "64", "--charset", "0-9"];
    let args = [&args[..], &rest, &["--set", "ocr.dims=[16,24,32,48]", "--set", "ocr.depths=[1,1,1,1]"]].concat();
    let single = train(&args, dir.path(), "single", 4, None);
    let ranks = train(&args, dir.path(), "ranks", 2, Some(2));
    assert_same_training(&single, &ranks, "ocr");
    assert_sharded_validation_is_one_process(&ranks, "cer", &["cer"]);
}

/// Starts rank `rank` of a two-rank job as torchrun would (the launch variables, no `--nproc`), its output in
/// `log`.
fn start_rank(args: &[&str], rank: usize, port: u16, log: &Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("GLOO_SOCKET_IFNAME", "lo")
        .env("OMP_NUM_THREADS", "1")
        .env("KILN_DIST_TIMEOUT", "30")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_rank_stops_the_job_with_a_clear_error_and_a_resume_ends_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 3, 0), 4);
    let project = dir.path().to_str().unwrap();
    let args = ["train", "--task", "classify", "--data", data.to_str().unwrap(), "--model", "convnext_atto"];
    let rest = ["--img-size", "32", "--epochs", "4", "--batch", "3", "--workers", "1", "--device", "cpu"];
    let common = [&args[..], &rest, &["--drop-path-rate", "0", "--project", project]].concat();
    let named = |name: &'static str| [&common[..], &["--name", name]].concat();

    // The uninterrupted job.
    let out = common::kiln(&[&named("whole")[..], &["--nproc", "2"]].concat(), dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The same job, rank 1 killed (SIGKILL) once the first epoch's checkpoint is written.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cut = named("cut");
    let logs = [dir.path().join("rank0.log"), dir.path().join("rank1.log")];
    let mut ranks: Vec<_> = (0..2).map(|r| start_rank(&cut, r, port, &logs[r])).collect();
    let last = dir.path().join("classify/cut/weights/last.safetensors");
    let started = std::time::Instant::now();
    while !last.exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed = std::time::Instant::now();
    let status = ranks[0].wait().unwrap();
    let waited = killed.elapsed();
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(!status.success(), "rank 0 finished the job although rank 1 was killed: {log}");
    assert!(waited.as_secs() < 40, "rank 0 took {waited:?} to fail (timeout 30 s)");
    assert!(log.contains("rank 0 of 2") && log.contains("another rank of the job died"), "a clear error: {log}");
    let rows = records(&dir.path().join("classify/cut")).len();
    assert!(rows < 4, "the cut run had not finished: {rows} epochs");

    // Resumed with --nproc: the same epochs and weights as the uninterrupted job.
    let (whole, cut) = (dir.path().join("classify/whole"), dir.path().join("classify/cut"));
    let out = common::kiln(&["train", "--resume", cut.to_str().unwrap(), "--nproc", "2"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (records(&whole), records(&cut));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.train, &x.val), (&y.train, &y.val), "epoch {}", x.epoch);
    }
    let (wa, wb) = (learned(&whole), learned(&cut));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (name, x) in &wa {
        assert!(x.equal(&wb[name]), "{name} differs after the resume");
    }
}

/// The processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn interrupting_the_launcher_stops_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 3, 0), 6);
    let marker = format!("interrupted-{}", std::process::id());
    let project = dir.path().to_str().unwrap();
    let args = ["train", "--task", "classify", "--data", data.to_str().unwrap(), "--model", "convnext_atto"];
    let rest = ["--img-size", "32", "--epochs", "200", "--batch", "3", "--workers", "1", "--device", "cpu"];
    let all = [&args[..], &rest, &["--project", project, "--name", &marker, "--nproc", "2"]].concat();
    let launcher = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&all)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both ranks training: rank 0 has finished an epoch.
    let results = dir.path().join("classify").join(&marker).join("results.csv");
    let started = std::time::Instant::now();
    while !results.exists() {
        assert!(started.elapsed().as_secs() < 120, "no epoch within 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(processes_with(&marker).len(), 3, "the launcher and two ranks: {:?}", processes_with(&marker));
    let status = std::process::Command::new("kill").args(["-INT", &launcher.id().to_string()]).status().unwrap();
    assert!(status.success());
    let interrupted = std::time::Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("interrupted: every rank was stopped"), "{stderr}");
    assert!(interrupted.elapsed().as_secs() < 20, "stopping took {:?}", interrupted.elapsed());
    assert!(processes_with(&marker).is_empty(), "ranks left running: {:?}", processes_with(&marker));
}

#[test]
fn launches_that_cannot_work_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (2, 0, 0), 1);
    let data = data.to_str().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["train", "--data", data, "--nproc", "2", "--trials", "2"], &[]);
    assert!(err.contains("--nproc") && err.contains("--trials"), "{err}");
    let err = run(&["train", "--data", data, "--nproc", "2", "--dist-timeout=-5"], &[]);
    assert!(err.contains("--dist-timeout") && err.contains("not in (0"), "{err}");
    let err = run(&["train", "--data", data, "--nproc", "100000"], &[]);
    assert!(err.contains("more ranks than this machine has cores"), "{err}");
    let err = run(&["train", "--data", data, "--nproc", "2"], &[("WORLD_SIZE", "2")]);
    assert!(err.contains("already a rank of a job"), "{err}");
    let err = run(&["train", "--data", data, "--trials", "2"], &[("WORLD_SIZE", "2"), ("RANK", "0")]);
    assert!(err.contains("data-parallel trials are not supported yet"), "{err}");
    assert!(!dir.path().join("runs").exists(), "nothing was written");
}

#[test]
fn a_single_process_run_resumes_on_two_ranks_with_a_warning_that_the_data_order_differs() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 0), 9);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 2);
    (config.img_size, config.batch, config.workers) = (32, 4, 1);
    let stopped = kiln_train::classify::train_observed(&config, &mut |_| std::ops::ControlFlow::Break(())).unwrap();
    assert!(stopped.interrupted);
    let run = stopped.run.path.to_str().unwrap().to_string();
    let out = common::kiln(&["train", "--resume", &run, "--nproc", "2"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming a run trained on 1 rank(s) with 2") && stderr.contains("data order differs"),
        "{stderr}"
    );
    assert_eq!(records(&stopped.run.path).len(), 2);
    let saved = kiln_train::checkpoint::load(&stopped.run.path.join("weights/last.safetensors")).unwrap();
    assert_eq!(saved.state.world_size, 2);
    assert!(
        saved.tensors.contains_key("rng.cpu") && saved.tensors.contains_key("rng.cpu.rank1"),
        "both ranks' generators"
    );
}

#[test]
fn unreadable_images_are_counted_for_the_job_not_for_rank_0s_shares() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 3, 0), 10);
    // Four in train (dealt between the ranks anew each epoch), two in val next to each other (one per rank's share).
    for (split, i) in [("train", 0), ("train", 1), ("train", 2), ("train", 3), ("val", 0), ("val", 1)] {
        common::write_truncated_png(&data.join(split).join("circle").join(format!("zz_bad{i}.png")));
    }
    let project = dir.path().to_str().unwrap();
    let args = ["train", "--task", "classify", "--data", data.to_str().unwrap(), "--model", "convnext_atto"];
    let rest = ["--img-size", "32", "--epochs", "1", "--batch", "3", "--workers", "1", "--cache", "none"];
    let all = [&args[..], &rest, &["--project", project, "--name", "bad", "--nproc", "2", "--device", "cpu"]].concat();
    let out = common::kiln(&all, dir.path());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let rows = records(&dir.path().join("classify/bad"));
    assert_eq!(rows[0].skipped_images, 6, "every rank's unreadable files, once each");
    assert!(stdout.contains("skipped 6 unreadable image(s)"), "{stdout}");
}
