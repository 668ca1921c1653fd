//! TPE's suggestion time with 1,000 finished trials and 8 parameters (goal: under 5 ms per suggestion).
//! `cargo bench -p kiln-tune --bench tpe`.

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use serde_json::json;

use kiln_tune::{Distribution, Observation, Outcome, Sampler, SearchSpace, TpeConfig, TpeSampler};

fn space() -> SearchSpace {
    let mut space = SearchSpace::new();
    for i in 0..5 {
        space.insert(format!("f{i}"), Distribution::Float { low: 1e-5, high: 1.0, log: i % 2 == 0, step: None });
    }
    space.insert("i0".into(), Distribution::Int { low: 8, high: 256, step: 8, log: false });
    space.insert("i1".into(), Distribution::Int { low: 1, high: 64, step: 1, log: true });
    space.insert(
        "c0".into(),
        Distribution::Categorical { choices: vec![json!("a"), json!("b"), json!("c"), json!("d")] },
    );
    space
}

fn history(space: &SearchSpace, n: usize) -> Vec<Observation> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut sampler = kiln_tune::RandomSampler::new(1);
    (0..n)
        .map(|_| {
            let params = sampler.sample(space, &[]);
            Observation { params, value: rng.random(), outcome: Outcome::Complete }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let space = space();
    for (n, multivariate) in [(100, false), (1000, false), (1000, true)] {
        let history = history(&space, n);
        let mut tpe = TpeSampler::new(TpeConfig { multivariate, ..Default::default() });
        let name = format!("tpe_suggest_{n}_trials_8_params{}", if multivariate { "_multivariate" } else { "" });
        c.bench_function(&name, |b| b.iter(|| tpe.sample(&space, &history)));
    }
}

criterion_group!(tpe, bench);
criterion_main!(tpe);
