//! Synchronised BatchNorm on 2 ranks over Gloo on 127.0.0.1, through the trainer's own
//! `Ranks` and `train::build_network_for`: a PreAct ResNet trained a few SGD steps on
//! each rank's half of a batch (gradients summed over the ranks) holds, on both ranks,
//! bit for bit the same weights and running statistics, within 1e-5 of one process
//! trained on the whole batch; with `sync_batchnorm = false` the running statistics
//! differ between the ranks and from one process's. This test binary re-executes itself
//! as the ranks (`worker` does a rank's part when `SAT_SBN_ROLE` is set).
use sat_host::config::RunConfig;
use sat_host::distributed::Ranks;
use sat_host::train::{build_network, build_network_for};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "SAT_SBN_ROLE";
const RESULT: &str = "SAT-SBN-RESULT";
const STEPS: usize = 3;
const HALF: i64 = 8;

fn config(sync: bool) -> RunConfig {
    let mut c = RunConfig {
        seed: 21,
        ..Default::default()
    };
    c.model.arch = "preact-resnet18".into();
    c.model.width = 4;
    c.data.image_size = 16;
    c.train.batch_size = HALF as usize;
    c.train.sync_batchnorm = sync;
    c.distributed.timeout_seconds = 20;
    c
}

/// Every variable of `vs`, flattened in name order, in float64.
fn flat(vs: &tch::nn::VarStore, filter: &str) -> Tensor {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.contains(filter))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let parts: Vec<Tensor> = vars
        .iter()
        .map(|(_, t)| t.detach().to_kind(Kind::Double).view([-1]))
        .collect();
    Tensor::cat(&parts, 0)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// `STEPS` SGD steps of `net` on `x`, `y` with the loss scaled by `scale`; `sync` sums
/// each gradient over the ranks before the update.
fn train(
    net: &sat_host::train::Network,
    x: &Tensor,
    y: &Tensor,
    scale: f64,
    sync: &dyn Fn(&Tensor),
) {
    for _ in 0..STEPS {
        for p in net.vs.trainable_variables() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = net.model.forward_t(x, true).cross_entropy_for_logits(y) * scale;
        loss.backward();
        tch::no_grad(|| {
            for mut p in net.vs.trainable_variables() {
                let g = p.grad();
                sync(&g);
                let _ = p.f_sub_(&(g * 0.1)).unwrap();
            }
        });
    }
}

/// A rank's part.
#[test]
fn worker() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let sync = role == "sync";
    let launch = sat_distributed::Launch::from_env()
        .unwrap()
        .expect("a launch");
    let c = config(sync);
    let ranks = Ranks::for_launch(Some(&launch), &c, Device::Cpu).unwrap();
    let rank = ranks.rank() as i64;
    let net = build_network_for(&c, 4, Device::Cpu, &ranks).unwrap();
    let one = build_network(&c, 4, Device::Cpu).unwrap();
    assert_eq!(max_abs(&(flat(&net.vs, "") - flat(&one.vs, ""))), 0.0);

    tch::manual_seed(5);
    let x = Tensor::rand([2 * HALF, 3, 16, 16], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(4, [2 * HALF], (Kind::Int64, Device::Cpu));
    let group = ranks.process_group().expect("a group");
    let (xs, ys) = (
        x.narrow(0, rank * HALF, HALF),
        y.narrow(0, rank * HALF, HALF),
    );
    // Each rank's mean loss over its half, halved and summed over the ranks, is the
    // mean loss over the whole batch.
    train(&net, &xs, &ys, 0.5, &|g| group.all_reduce_sum(g).unwrap());
    train(&one, &x, &y, 1.0, &|_| {});

    let gathered = |filter: &str| {
        let mine = flat(&net.vs, filter);
        let all = group.all_gather(&mine).unwrap();
        (
            max_abs(&(&all[0] - &all[1])),
            max_abs(&(mine - flat(&one.vs, filter))),
        )
    };
    let (ranks_weights, one_weights) = gathered("");
    let (ranks_stats, one_stats) = gathered("running_");
    println!(
        "{RESULT} rank={rank} ranks_all={ranks_weights:e} ranks_running={ranks_stats:e} one_all={one_weights:e} one_running={one_stats:e}"
    );
}

/// Runs both ranks with `role`; returns rank 0's result line's figures.
fn run(role: &str) -> [f64; 4] {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let exe = std::env::current_exe().unwrap();
    struct Kill(Vec<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut kids = Kill(Vec::new());
    for rank in 0..2 {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
        for var in [
            "LOCAL_RANK",
            "LOCAL_WORLD_SIZE",
            "GLOO_SOCKET_IFNAME",
            "SLURM_PROCID",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .env(ROLE, role)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .env("OMP_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        kids.0.push(child);
    }
    let start = Instant::now();
    while kids.0.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "ranks still running after 120 s; killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let outs: Vec<_> = std::mem::take(&mut kids.0)
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut figures = Vec::new();
    for (rank, out) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find_map(|l| l.find(RESULT).map(|i| &l[i..]));
        let Some(line) = line.filter(|_| out.status.success()) else {
            panic!(
                "rank {rank} ({role}) failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        };
        eprintln!("{role}: {line}");
        figures.push(line.to_string());
    }
    let value = |key: &str| -> f64 {
        let field = figures[0]
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .unwrap();
        field.parse().unwrap()
    };
    ["ranks_all", "ranks_running", "one_all", "one_running"].map(value)
}

#[test]
fn synchronised_batchnorm_on_two_ranks_is_one_process_on_the_whole_batch() {
    if !sat_distributed::Backend::Gloo.is_available() {
        eprintln!("skipped: {}", sat_distributed::Backend::Gloo.build_status());
        return;
    }
    let [ranks_all, ranks_running, one_all, one_running] = run("sync");
    assert_eq!(ranks_all, 0.0, "the ranks' variables differ");
    assert_eq!(ranks_running, 0.0, "the ranks' running statistics differ");
    assert!(one_all <= 1e-5, "one process differs by {one_all}");
    assert!(
        one_running <= 1e-5,
        "one process's running statistics differ by {one_running}"
    );

    let [_, ranks_running, one_all, one_running] = run("local");
    assert!(
        ranks_running > 1e-4,
        "per-rank running statistics agree within {ranks_running}"
    );
    assert!(
        one_running > 1e-4,
        "per-rank running statistics are one process's within {one_running}"
    );
    assert!(
        one_all > 1e-4,
        "per-rank BatchNorm trains as one process within {one_all}"
    );
}
