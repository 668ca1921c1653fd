//! The cost of data-parallel gradient reduction at world size 1: one training step of convnext_atto (batch 8 at
//! 64×64, forward, cross-entropy, backward) on its own, and the same step through c10d's `Reducer` on a one-rank
//! Gloo group on loopback (its autograd hooks, bucket copies and a one-rank all-reduce of every bucket). The
//! difference is what DDP costs a rank before any network time.
//!
//! `cargo bench --bench ddp_reducer` (`make bench`).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

use kiln_models::{ClassifierConfig, ImageClassifier};
use kiln_train::distributed::{DistEnv, GradientReducer, ProcessGroup};

fn step(
    model: &ImageClassifier,
    vs: &nn::VarStore,
    images: &Tensor,
    labels: &Tensor,
    reducer: Option<&GradientReducer>,
) {
    for mut p in vs.trainable_variables() {
        p.zero_grad();
    }
    let logits = model.forward_t(images, true);
    if let Some(r) = reducer {
        r.prepare_for_backward(&[&logits]).unwrap();
    }
    logits.cross_entropy_for_logits(labels).backward();
}

fn benches(c: &mut Criterion) {
    tch::set_num_threads(1);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", 10)).unwrap();
    let images = Tensor::randn([8, 3, 64, 64], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 7]);
    let mut group = c.benchmark_group("convnext_atto_step_b8_64px_1_thread");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("single_process", |b| b.iter(|| step(&model, &vs, &images, &labels, None)));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::env::set_var("GLOO_SOCKET_IFNAME", "lo");
    let env = DistEnv {
        rank: 0,
        local_rank: 0,
        world_size: 1,
        local_world_size: 1,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        restart_count: 0,
    };
    let pg = ProcessGroup::join(&env, Duration::from_secs(60)).unwrap();
    let params = vs.trainable_variables();
    let reducer = GradientReducer::new(&pg, &params.iter().collect::<Vec<_>>(), 25.0, false).unwrap();
    group.bench_function("reducer_world_1", |b| b.iter(|| step(&model, &vs, &images, &labels, Some(&reducer))));
    group.finish();
}

criterion_group!(ddp, benches);
criterion_main!(ddp);
