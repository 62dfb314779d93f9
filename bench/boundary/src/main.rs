//! `plugin-boundary`: what a dispatch through a pushkin library costs over the same work done
//! in-process (target: at most 20 µs more).
//!
//! The work is the no-op pushkin's (`bench/noop-pushkin`): take the notification and devices JSON
//! the host hands over, parse them into a [`Notification`] as the SDK does, call the pushkin, and
//! turn its answer into the rejected-pushkey list. It runs three ways, each driven from a tokio
//! runtime shaped like the gateway's (one worker per core):
//!
//! - `in-process`: the work on the host runtime itself, as if the pushkin were linked in;
//! - `in-process+hop`: the same, spawned on a second runtime (plugin-sized, as the SDK's) and
//!   awaited, to tell the runtime hop apart from the ABI;
//! - `cdylib`: `PushkinFfi::dispatch` on the pushkin built by the real library, loaded with
//!   abi_stable and driven through async-ffi exactly as the gateway's dispatch does.
//!
//! Each is measured for latency (one dispatch at a time: p50, p99, mean) and for cost under
//! concurrency (`--concurrency` tasks: wall time and the process's CPU time per dispatch), over
//! several rounds in rotating order; medians over rounds are reported.
//!
//! Usage: plugin-boundary [--library PATH] [--iterations N] [--rounds R] [--concurrency K]
//! (defaults: the library beside this executable, 20000, 5, 64). Exit status 0 when the target
//! holds, 1 when it does not, 2 on a setup error.

#[path = "../../noop-pushkin/src/noop.rs"]
mod noop;

use abi_stable::library::lib_header_from_path;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use futures_util::future::join_all;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sygnal_plugin_api::abi::{
    FfiDispatchResult, FfiPushError, HostCtx, LogLevel, MetricOp, PluginModRef, PushErrorKind,
    PushkinBox,
};
use sygnal_plugin_api::{Notification, Pushkin, PushkinContext};
use tokio::runtime::Runtime;

/// The notification of ../shared/perf's notify1.lua (Synapse-shaped, one device), whole, as the
/// host passes it, and the devices routed to the app.
const NOTIFICATION: &str = r#"{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm","pushkey":"spqr","pushkey_ts":12345678,"data":{}}]}"#;
const DEVICES: &str =
    r#"[{"app_id":"com.example.gcm","pushkey":"spqr","pushkey_ts":12345678,"data":{}}]"#;
const REQUEST_ID: &str = "bench-0000000000000000";
/// The issue's target for the boundary's extra cost per dispatch.
const TARGET_US: f64 = 20.0;
/// Linux reports process CPU time in /proc in units of USER_HZ, fixed at 100 per second.
const USER_HZ: f64 = 100.0;

struct Options {
    library: PathBuf,
    iterations: usize,
    rounds: usize,
    concurrency: usize,
}

fn parse_options() -> Result<Options, String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_default();
    let mut options = Options {
        library: exe_dir.join(format!(
            "{}sygnal_bench_noop_pushkin{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
        iterations: 20_000,
        rounds: 5,
        concurrency: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        let count = |text: String| -> Result<usize, String> {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{arg}: expected a positive integer, got {text:?}"))
        };
        match arg.as_str() {
            "--library" => options.library = PathBuf::from(value()?),
            "--iterations" => options.iterations = count(value()?)?,
            "--rounds" => options.rounds = count(value()?)?,
            "--concurrency" => options.concurrency = count(value()?)?,
            "-h" | "--help" => {
                return Err(
                    "usage: plugin-boundary [--library PATH] [--iterations N] [--rounds R] [--concurrency K]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(options)
}

/// One way of dispatching, shared by the measuring tasks.
#[derive(Clone)]
enum Path {
    InProcess(Arc<noop::NoOp>),
    InProcessHop(Arc<noop::NoOp>, tokio::runtime::Handle),
    Cdylib(Arc<PushkinBox>),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::InProcess(_) => "in-process",
            Path::InProcessHop(..) => "in-process+hop",
            Path::Cdylib(_) => "cdylib",
        }
    }

    async fn dispatch(&self) -> FfiDispatchResult {
        match self {
            Path::InProcess(pushkin) => in_process(pushkin, NOTIFICATION, DEVICES).await,
            Path::InProcessHop(pushkin, plugin_runtime) => {
                let pushkin = Arc::clone(pushkin);
                let task = plugin_runtime
                    .spawn(async move { in_process(&pushkin, NOTIFICATION, DEVICES).await });
                task.await.unwrap_or_else(|_| {
                    RResult::RErr(FfiPushError {
                        kind: PushErrorKind::Panic,
                        message: "task failed".into(),
                    })
                })
            }
            Path::Cdylib(pushkin) => {
                pushkin
                    .dispatch(
                        RStr::from_str(REQUEST_ID),
                        RStr::from_str(NOTIFICATION),
                        RStr::from_str(DEVICES),
                    )
                    .await
            }
        }
    }
}

/// The SDK's side of a dispatch (parse, call, convert), without the library around it.
async fn in_process(
    pushkin: &noop::NoOp,
    notification_json: &str,
    devices_json: &str,
) -> FfiDispatchResult {
    let notification = match Notification::from_dispatch_json(notification_json, devices_json) {
        Ok(notification) => notification,
        Err(message) => {
            return RResult::RErr(FfiPushError {
                kind: PushErrorKind::Permanent,
                message: message.into(),
            })
        }
    };
    match pushkin.dispatch(&notification).await {
        Ok(rejected) => RResult::ROk(rejected.into_iter().map(RString::from).collect::<RVec<_>>()),
        Err(err) => RResult::RErr(FfiPushError {
            kind: PushErrorKind::Temporary,
            message: err.message.into(),
        }),
    }
}

extern "C" fn discard_log(_: LogLevel, _: RStr<'_>, _: RStr<'_>, _: RStr<'_>, _: RStr<'_>) {}
extern "C" fn discard_metric(_: MetricOp, _: RStr<'_>, _: RStr<'_>, _: RStr<'_>, _: f64) {}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gateway's default for a plugin runtime: half the cores, at least one.
fn plugin_threads() -> usize {
    (cores() / 2).max(1)
}

/// Loads the library as the gateway's registry does and builds one pushkin.
fn load_cdylib(path: &std::path::Path) -> Result<PushkinBox, String> {
    let header = lib_header_from_path(path).map_err(|err| {
        format!(
            "{}: {}",
            path.display(),
            err.to_string().lines().next().unwrap_or("cannot load")
        )
    })?;
    let module = header.init_root_module::<PluginModRef>().map_err(|err| {
        format!(
            "{}: not a compatible pushkin library: {err:.200}",
            path.display()
        )
    })?;
    let host_info = format!(
        r#"{{"host_version":"bench","user_agent":"sygnal-bench","worker_threads":{}}}"#,
        plugin_threads()
    );
    let ctx = HostCtx {
        log: discard_log,
        max_log_level: LogLevel::Warn,
        metric: discard_metric,
        host_info_json: RString::from(host_info),
    };
    module.new()(ctx, RStr::from_str("com.example.gcm"), RStr::from_str("{}"))
        .into_result()
        .map_err(|err| format!("{}: pushkin constructor failed: {err}", path.display()))
}

/// Process CPU time (user + system, all threads) so far.
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after_comm = stat.rsplit_once(") ")?.1.to_owned();
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            // After "pid (comm) ", utime and stime are the 12th and 13th fields.
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    Duration::from_secs_f64(ticks / USER_HZ)
}

struct Latency {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

struct Throughput {
    wall_us: f64,
    cpu_us: f64,
}

fn check(outcome: &FfiDispatchResult) {
    if let RResult::RErr(err) = outcome {
        eprintln!("plugin-boundary: a dispatch failed: {}", err.message);
        std::process::exit(2);
    }
}

async fn measure_latency(path: &Path, iterations: usize) -> Latency {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let outcome = path.dispatch().await;
        samples.push(started.elapsed());
        check(&outcome);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let total: Duration = samples.iter().sum();
    Latency {
        p50_us: at(0.50).as_secs_f64() * 1e6,
        p99_us: at(0.99).as_secs_f64() * 1e6,
        mean_us: total.as_secs_f64() * 1e6 / samples.len() as f64,
    }
}

async fn measure_throughput(path: &Path, iterations: usize, concurrency: usize) -> Throughput {
    let per_task = iterations.div_ceil(concurrency);
    let cpu0 = process_cpu();
    let started = Instant::now();
    let tasks = (0..concurrency).map(|_| {
        let path = path.clone();
        tokio::spawn(async move {
            for _ in 0..per_task {
                check(&path.dispatch().await);
            }
        })
    });
    for joined in join_all(tasks).await {
        if joined.is_err() {
            eprintln!("plugin-boundary: a measuring task failed");
            std::process::exit(2);
        }
    }
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu0);
    let total = (per_task * concurrency) as f64;
    Throughput {
        wall_us: wall.as_secs_f64() * 1e6 / total,
        cpu_us: cpu.as_secs_f64() * 1e6 / total,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    mean: Vec<f64>,
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let host = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("host")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("plugin-boundary: cannot start the host runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let hop: Runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plugin_threads())
        .thread_name("in-process-plugin")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("plugin-boundary: cannot start the second runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let cdylib = match load_cdylib(&options.library) {
        Ok(pushkin) => pushkin,
        Err(message) => {
            eprintln!("plugin-boundary: {message}");
            return ExitCode::from(2);
        }
    };
    let local = noop::NoOp::new(PushkinContext::for_tests(
        "com.example.gcm",
        Default::default(),
        Default::default(),
    ))
    .map(Arc::new);
    let Ok(local) = local else {
        eprintln!("plugin-boundary: cannot build the in-process pushkin");
        return ExitCode::from(2);
    };
    let paths = [
        Path::InProcess(Arc::clone(&local)),
        Path::InProcessHop(Arc::clone(&local), hop.handle().clone()),
        Path::Cdylib(Arc::new(cdylib)),
    ];

    println!(
        "plugin-boundary: {} cores, host runtime {} workers, plugin runtimes {} worker(s); \
         {} dispatches x {} rounds per way, concurrency {}; library {}",
        cores(),
        cores(),
        plugin_threads(),
        options.iterations,
        options.rounds,
        options.concurrency,
        options.library.display()
    );
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    host.block_on(async {
        // Warm-up: first calls fault in code, grow allocator arenas and start runtime threads.
        for path in &paths {
            measure_latency(path, options.iterations / 10 + 1).await;
        }
        for round in 0..options.rounds {
            for offset in 0..paths.len() {
                let index = (round + offset) % paths.len();
                let path = &paths[index];
                // Measured from a task, as the gateway's handlers run.
                let latency = {
                    let path = path.clone();
                    let iterations = options.iterations;
                    tokio::spawn(async move { measure_latency(&path, iterations).await })
                        .await
                        .ok()
                };
                let Some(latency) = latency else {
                    eprintln!("plugin-boundary: a measuring task failed");
                    std::process::exit(2);
                };
                let throughput =
                    measure_throughput(path, options.iterations, options.concurrency).await;
                let s = &mut samples[index];
                s.p50.push(latency.p50_us);
                s.p99.push(latency.p99_us);
                s.mean.push(latency.mean_us);
                s.wall.push(throughput.wall_us);
                s.cpu.push(throughput.cpu_us);
            }
        }
    });

    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>16} {:>16}",
        "way", "p50 µs", "p99 µs", "mean µs", "wall µs/disp.", "CPU µs/disp."
    );
    let mut medians = Vec::new();
    for (path, s) in paths.iter().zip(samples) {
        let m = [
            median(s.p50),
            median(s.p99),
            median(s.mean),
            median(s.wall),
            median(s.cpu),
        ];
        println!(
            "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>16.2} {:>16.2}",
            path.name(),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4]
        );
        medians.push(m);
    }
    let (local, lib) = (medians[0], medians[2]);
    let extra_p50 = lib[0] - local[0];
    let extra_mean = lib[2] - local[2];
    let extra_cpu = lib[4] - local[4];
    println!(
        "cdylib over in-process: p50 {extra_p50:+.2} µs, mean {extra_mean:+.2} µs, \
         CPU per dispatch under concurrency {extra_cpu:+.2} µs (target: at most {TARGET_US} µs)"
    );
    if extra_p50 <= TARGET_US && extra_mean <= TARGET_US && extra_cpu <= TARGET_US {
        println!("PASS: the plugin boundary costs at most {TARGET_US} µs per dispatch");
        ExitCode::SUCCESS
    } else {
        println!("FAIL: the plugin boundary costs more than {TARGET_US} µs per dispatch");
        ExitCode::FAILURE
    }
}
