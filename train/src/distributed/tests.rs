//! Two real ranks on loopback (Gloo, one thread each): the test spawns its own binary twice, as rank 0 and rank 1,
//! and each rank checks what it sees.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::*;

const RANK_VAR: &str = "KILN_DIST_TEST_RANK";
const PORT_VAR: &str = "KILN_DIST_TEST_PORT";

/// Runs `test` (this module's test of that name) as ranks 0 and 1 of a two-rank job; both must pass.
fn on_two_ranks(test: &str) {
    on_two_ranks_expecting(test, [true, true]);
}

/// [`on_two_ranks`], checking only the ranks `check` names (a rank that exits on purpose is not checked).
fn on_two_ranks_expecting(test: &str, check: [bool; 2]) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args([&format!("distributed::tests::{test}"), "--exact", "--nocapture", "--test-threads", "1"])
                .env(RANK_VAR, rank.to_string())
                .env(PORT_VAR, port.to_string())
                .env("GLOO_SOCKET_IFNAME", "lo")
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        if start.elapsed() > Duration::from_secs(180) {
            children.iter_mut().for_each(|c| drop(c.kill()));
            panic!("{test}: the ranks did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (rank, child) in children.into_iter().enumerate().filter(|(rank, _)| check[*rank]) {
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{test}, rank {rank}: {text}");
    }
}

/// Rank `rank` of a two-rank job whose rank 0 hosts the store on 127.0.0.1:`port`.
fn two_rank_env(rank: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        local_rank: rank,
        world_size: 2,
        local_world_size: 2,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart_count: 0,
    }
}

/// This process's rank when it runs as a spawned rank, else `None` (the test then spawns the ranks).
fn spawned() -> Option<(DistEnv, ProcessGroup)> {
    let rank: usize = std::env::var(RANK_VAR).ok()?.parse().unwrap();
    let port: u16 = std::env::var(PORT_VAR).unwrap().parse().unwrap();
    let env = two_rank_env(rank, port);
    let group = ProcessGroup::join(&env, Duration::from_secs(60)).unwrap();
    Some((env, group))
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
}

#[test]
fn collectives_reduce_gather_and_broadcast_across_two_ranks() {
    let Some((env, group)) = spawned() else {
        return on_two_ranks("collectives_reduce_gather_and_broadcast_across_two_ranks");
    };
    let r = env.rank as f32;
    let t = Tensor::from_slice(&[r + 1.0, 10.0 * r, -r]);
    group.all_reduce(&t, ReduceOp::Sum).unwrap();
    assert_eq!(values(&t), [3.0, 10.0, -1.0]);
    let t = Tensor::from_slice(&[r, -r]);
    group.all_reduce(&t, ReduceOp::Max).unwrap();
    assert_eq!(values(&t), [1.0, 0.0]);
    let gathered = group.all_gather(&Tensor::from_slice(&[r, r + 0.5])).unwrap();
    assert_eq!(gathered.iter().map(values).collect::<Vec<_>>(), [vec![0.0, 0.5], vec![1.0, 1.5]]);
    let t = Tensor::from_slice(&[r + 7.0]);
    group.broadcast(&t, 1).unwrap();
    assert_eq!(values(&t), [8.0]);
    // The job's store: rank 1 waits for what rank 0 sets (longer than the first read's buffer).
    let long = "r".repeat(5000);
    if env.rank == 0 {
        group.store_set("kiln/test", long.as_bytes()).unwrap();
    }
    assert_eq!(group.store_get("kiln/test").unwrap(), long.as_bytes());
    assert!(group.store_has("kiln/test").unwrap());
    assert!(!group.store_has("kiln/never-set").unwrap());
    group.barrier().unwrap();
}

/// Loss of a linear layer `w`, `b` on rows `x` against `y` (mean squared error).
fn loss(w: &Tensor, b: &Tensor, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let out = x.matmul(&w.tr()) + b;
    ((&out - y).square().mean(Kind::Float), out)
}

#[test]
fn two_ranks_train_as_one_process_on_both_batches() {
    let Some((env, group)) = spawned() else { return on_two_ranks("two_ranks_train_as_one_process_on_both_batches") };
    // Each rank starts from its own weights; syncing gives both rank 0's.
    tch::manual_seed(100 + env.rank as i64);
    let w = Tensor::randn([3, 5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let b = Tensor::randn([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    group.sync_params(&[&w, &b]).unwrap();
    let both = group.all_gather(&w.detach()).unwrap();
    assert_eq!(values(&both[0]), values(&both[1]), "rank 0's weights on both ranks");
    // The reference: one process on both ranks' rows, from the same start.
    let (mut w_ref, mut b_ref) = (w.detach().copy().set_requires_grad(true), b.detach().copy().set_requires_grad(true));
    tch::manual_seed(7);
    let x = Tensor::randn([4, 5], (Kind::Float, tch::Device::Cpu));
    let y = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu));
    let mine = |t: &Tensor| t.narrow(0, 2 * env.rank as i64, 2);
    let reducer = GradientReducer::new(&group, &[&w, &b], 25.0, false).unwrap();
    let (mut w, mut b) = (w, b);
    for step in 0..3 {
        let (l, out) = loss(&w, &b, &mine(&x), &mine(&y));
        reducer.prepare_for_backward(&[&out]).unwrap();
        l.backward();
        let (l_ref, _) = loss(&w_ref, &b_ref, &x, &y);
        l_ref.backward();
        for (ours, theirs) in [(&w, &w_ref), (&b, &b_ref)] {
            let diff = (ours.grad() - theirs.grad()).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "step {step}: averaged gradients differ from the combined batch's by {diff}");
        }
        tch::no_grad(|| {
            for p in [&mut w, &mut b, &mut w_ref, &mut b_ref] {
                let g = p.grad();
                let _ = p.f_sub_(&(g * 0.1)).unwrap();
                p.zero_grad();
            }
        });
    }
    let both = group.all_gather(&w.detach()).unwrap();
    assert_eq!(values(&both[0]), values(&both[1]), "bitwise-equal weights on both ranks after training");
    let diff = (&w - &w_ref).abs().max().double_value(&[]);
    assert!(diff <= 1e-6, "two ranks and one process end {diff} apart");
}

#[test]
fn a_rank_that_dies_fails_the_others_collective_instead_of_hanging() {
    let Some((env, group)) = spawned() else {
        return on_two_ranks_expecting(
            "a_rank_that_dies_fails_the_others_collective_instead_of_hanging",
            [true, false],
        );
    };
    group.barrier().unwrap();
    if env.rank == 1 {
        // Gone without a word, as a killed worker is.
        std::process::exit(3);
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let err = group.all_reduce(&Tensor::from_slice(&[1.0f32]), ReduceOp::Sum).unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(60), "failed only after {:?}", start.elapsed());
    assert!(err.starts_with("distributed all-reduce:"), "{err}");
    eprintln!("rank 0 was told: {}", err.lines().next().unwrap_or_default());
}

#[test]
fn a_rank_that_cannot_reach_the_store_names_its_address_and_port() {
    // A port nobody listens on: rank 1 waits for rank 0's store there, then gives up naming it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = two_rank_env(1, port);
    let started = Instant::now();
    let err = ProcessGroup::join(&env, Duration::from_secs(2)).err().expect("no store listens there").to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("rank 1 of 2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "gave up after {:?}", started.elapsed());
}
