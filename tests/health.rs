//! Honest health: /readyz and /healthz of operators that cannot reach the apiserver, lose it, find
//! it hanging, and get it back, or stand by; a taken HTTP port and out-of-range durations stop the
//! process at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use artifact_operator::controller::health::{probe_interval, probe_timeout};
use artifact_operator::leader::{LEASE_DURATION, RENEW_INTERVAL};
use common::{Operator, eventually, kubeconfig_with_server, setup};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The liveness limit the operators in these tests run with.
const UNHEALTHY_AFTER: Duration = Duration::from_secs(3);
const UNHEALTHY_AFTER_FLAG: [&str; 2] = ["--unhealthy-after", "3s"];

/// A TCP forwarder on 127.0.0.1 to `target` that can be cut (its listener closed and every
/// connection dropped) and restored on the same port.
struct Forwarder {
    port: u16,
    target: SocketAddr,
    running: Option<tokio::task::JoinHandle<()>>,
}

/// The forwarder serves one operator, which needs a handful of connections.
const MAX_CONNECTIONS: usize = 32;

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let mut forwarder = Self { port: 0, target, running: None };
        forwarder.restore().await;
        forwarder
    }

    /// Listens again (on the first call, on a free port) and forwards every connection.
    async fn restore(&mut self) {
        let socket = TcpSocket::new_v4().unwrap();
        // The port of the dropped connections may linger in TIME_WAIT.
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], self.port))).unwrap();
        let listener = socket.listen(MAX_CONNECTIONS as u32).unwrap();
        self.port = listener.local_addr().unwrap().port();
        self.running = Some(tokio::spawn(forward(listener, self.target)));
    }

    /// Closes the listener, so that connecting is refused, and drops every open connection.
    fn cut(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Accepts connections and copies bytes both ways; dropping the future drops them all.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            continue;
        }
        connections.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A relay on 127.0.0.1 to `target`, run by socat (one process per connection) in a process group
/// of its own, that can be frozen with SIGSTOP: its connections stay open and nothing flows through
/// them, and new ones wait in its listen backlog, as with an apiserver that hangs. Only the
/// operator behind it sees the hang; the shared apiserver goes on serving every other test.
struct Relay {
    process: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        use std::os::unix::process::CommandExt;
        let port = common::free_port();
        let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("relay-{port}.log"));
        let process = std::process::Command::new("socat")
            .args([format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"), format!("TCP:{target}")])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("socat runs (tests/env/build.sh installs it)");
        let relay = Self { process, port, log };
        eventually(Duration::from_secs(10), "the relay to listen", || async {
            TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        relay
    }

    /// Sends `signal` to socat and every connection's process it forked.
    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.process.id());
        let sent = std::process::Command::new("kill").args(["-s", signal, "--", &group]).status().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(sent.success(), "kill -s {signal} -- {group}: {log}");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SIGKILL ends stopped processes too.
        self.signal("KILL");
        let _ = self.process.wait();
    }
}

/// What an operator answered until /healthz failed.
struct Unhealthy {
    /// The body of the failed /healthz.
    why: String,
    /// Whether /healthz answered 200 before.
    healthy_before: bool,
    /// Whether /readyz answered 200 on the way.
    ready_on_the_way: bool,
}

/// Polls /readyz and /healthz until /healthz answers 500.
async fn until_unhealthy(operator: &Operator, timeout: Duration) -> Unhealthy {
    let healthy_before = std::cell::Cell::new(false);
    let ready_on_the_way = std::cell::Cell::new(false);
    let why = eventually(timeout, "/healthz to fail", || {
        let (healthy_before, ready_on_the_way) = (&healthy_before, &ready_on_the_way);
        async move {
            let (ready, why_not) = operator.status("/readyz").await;
            assert!([0, 200, 503].contains(&ready), "/readyz: {ready} {why_not}");
            if ready == 200 {
                ready_on_the_way.set(true);
            }
            match operator.status("/healthz").await {
                (500, why) => Some(why),
                (200, _) => {
                    healthy_before.set(true);
                    None
                }
                _ => None,
            }
        }
    })
    .await;
    Unhealthy { why, healthy_before: healthy_before.get(), ready_on_the_way: ready_on_the_way.get() }
}

#[tokio::test]
async fn an_operator_that_never_reaches_the_apiserver_is_neither_ready_nor_healthy() {
    let nowhere = format!("https://127.0.0.1:{}", common::free_port());
    let kubeconfig = kubeconfig_with_server("health-nowhere", &nowhere);
    // Never created: nothing reaches the apiserver.
    let ns = "health-nowhere";
    for leader_election in [true, false] {
        let mut flags = UNHEALTHY_AFTER_FLAG.to_vec();
        if leader_election {
            flags.extend(["--leader-election", "--lease-namespace", ns]);
        }
        let started = Instant::now();
        let operator = Operator::start_as(&kubeconfig, ns, "10m", &flags);
        let Unhealthy { why, healthy_before, ready_on_the_way } =
            until_unhealthy(&operator, Duration::from_secs(20)).await;
        let unhealthy_after = started.elapsed();
        println!("leader election {leader_election}: /healthz failed {unhealthy_after:?} after the start: {why}");
        assert!(healthy_before, "/healthz is 200 until the limit");
        assert!(!ready_on_the_way, "never ready without the apiserver");
        assert!(unhealthy_after >= UNHEALTHY_AFTER, "failed after {unhealthy_after:?}");
        assert!(unhealthy_after < UNHEALTHY_AFTER + Duration::from_secs(5), "failed after {unhealthy_after:?}");
        assert!(why.starts_with("cannot reach the apiserver for "), "{why}");
        assert!(why.contains("(the limit is 3s)"), "{why}");
        let (ready, why_not) = operator.status("/readyz").await;
        assert_eq!(ready, 503);
        if leader_election {
            assert!(why_not.starts_with("standing by, but could not read the lease for "), "{why_not}");
            assert!(!operator.log_text().contains("starting the controllers"));
        } else {
            assert!(why_not.starts_with("cannot reach the apiserver for "), "{why_not}");
        }
        println!("leader election {leader_election}: /readyz 503: {why_not}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cut_off_from_the_apiserver_turns_unhealthy_and_recovers() {
    let (_client, ns) = setup("health-cut").await;
    let mut forwarder = Forwarder::start(common::apiserver_address()).await;
    let kubeconfig = kubeconfig_with_server(&ns, &format!("https://127.0.0.1:{}", forwarder.port));
    let operator = Operator::start_as(&kubeconfig, &ns, "10m", &UNHEALTHY_AFTER_FLAG);
    eventually(Duration::from_secs(60), "the operator to be ready through the forwarder", || async {
        (operator.status("/readyz").await == (200, "ok".to_owned())).then_some(())
    })
    .await;
    assert_eq!(operator.status("/healthz").await, (200, "ok".to_owned()));

    forwarder.cut();
    let cut = Instant::now();
    let Unhealthy { why, .. } = until_unhealthy(&operator, Duration::from_secs(30)).await;
    let unhealthy_after = cut.elapsed();
    let (ready, why_not) = operator.status("/readyz").await;
    println!("cut: /healthz 500 after {unhealthy_after:?}: {why}; /readyz {ready}: {why_not}");
    assert!(unhealthy_after >= UNHEALTHY_AFTER, "failed after {unhealthy_after:?}");
    assert!(why.starts_with("cannot reach the apiserver for "), "{why}");
    assert_eq!(ready, 503);
    assert!(why_not.starts_with("cannot reach the apiserver for "), "{why_not}");

    forwarder.restore().await;
    let restored = Instant::now();
    eventually(Duration::from_secs(60), "the operator to be healthy and ready again", || async {
        let healthy = operator.status("/healthz").await.0 == 200;
        let ready = operator.status("/readyz").await.0 == 200;
        (healthy && ready).then_some(())
    })
    .await;
    println!("restored: healthy and ready again after {:?}", restored.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_whose_apiserver_hangs_turns_unhealthy_and_recovers() {
    let (_client, ns) = setup("health-hang").await;
    let relay = Relay::start(common::apiserver_address()).await;
    let kubeconfig = kubeconfig_with_server(&ns, &format!("https://127.0.0.1:{}", relay.port));
    let mut operator = Operator::start_as(&kubeconfig, &ns, "10m", &UNHEALTHY_AFTER_FLAG);
    eventually(Duration::from_secs(60), "the operator to be ready through the relay", || async {
        (operator.status("/readyz").await == (200, "ok".to_owned())).then_some(())
    })
    .await;
    // Idle, with nothing to reconcile, it stays healthy: its probes are answered.
    let until = Instant::now() + 2 * UNHEALTHY_AFTER;
    while Instant::now() < until {
        assert_eq!(operator.status("/healthz").await, (200, "ok".to_owned()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let probes = operator.counter("artifact_operator_kube_requests_total{verb=\"probe\"}").await;
    assert!(probes >= 2.0, "{probes} probes");

    relay.signal("STOP");
    let stopped = Instant::now();
    let Unhealthy { why, healthy_before, .. } = until_unhealthy(&operator, Duration::from_secs(30)).await;
    let unhealthy_after = stopped.elapsed();
    let (ready, why_not) = operator.status("/readyz").await;
    println!("healthz 500 after SIGSTOP: {:.1} s: {why}", unhealthy_after.as_secs_f64());
    println!("readyz {ready}: {why_not}");
    assert!(healthy_before, "/healthz is 200 until the limit");
    assert!(why.starts_with("cannot reach the apiserver for "), "{why}");
    let within = probe_timeout(UNHEALTHY_AFTER).as_millis();
    assert!(why.ends_with(&format!("(the limit is 3s): no answer to GET /version within {within}ms")), "{why}");
    // The first probe after the hang goes out within an interval, and counts from when it was sent.
    let earliest = UNHEALTHY_AFTER - Duration::from_millis(500);
    let latest = UNHEALTHY_AFTER + probe_interval(UNHEALTHY_AFTER) + Duration::from_secs(2);
    assert!((earliest..=latest).contains(&unhealthy_after), "500 after {unhealthy_after:?}");
    assert_eq!(ready, 503);
    assert!(why_not.starts_with("cannot reach the apiserver for "), "{why_not}");

    // It stays unhealthy, and running, for as long as the apiserver hangs.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert_eq!(operator.status("/healthz").await.0, 500);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!operator.exited(), "a hanging apiserver does not stop the process");

    relay.signal("CONT");
    let continued = Instant::now();
    eventually(Duration::from_secs(30), "the operator to be healthy and ready again", || async {
        let healthy = operator.status("/healthz").await == (200, "ok".to_owned());
        let ready = operator.status("/readyz").await == (200, "ok".to_owned());
        (healthy && ready).then_some(())
    })
    .await;
    let recovered_after = continued.elapsed();
    println!("healthz 200 after SIGCONT: {:.1} s", recovered_after.as_secs_f64());
    let latest = probe_interval(UNHEALTHY_AFTER) + probe_timeout(UNHEALTHY_AFTER) + Duration::from_secs(2);
    assert!(recovered_after <= latest, "200 after {recovered_after:?}");
    assert!(!operator.exited());
    let log = operator.log_text();
    assert!(log.contains("the apiserver does not answer"), "the hang is logged");
    assert!(log.contains("the apiserver answers again"), "the end of the hang is logged");
}

#[tokio::test]
async fn a_standby_replica_is_ready_while_it_reads_the_lease() {
    let (_client, ns) = setup("health-standby").await;
    let leader = Operator::leading_replica(&ns).await;
    let standby = Operator::replica(&ns);
    eventually(Duration::from_secs(30), "the standby to be ready", || async {
        (standby.status("/readyz").await == (200, "ok".to_owned())).then_some(())
    })
    .await;
    // A single read would carry it for one lease duration; it stays ready by reading again.
    let until = Instant::now() + LEASE_DURATION + RENEW_INTERVAL;
    while Instant::now() < until {
        assert_eq!(standby.status("/readyz").await, (200, "ok".to_owned()));
        assert_eq!(standby.status("/healthz").await, (200, "ok".to_owned()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(!standby.log_text().contains("acquired the lease"), "the standby does not lead");
    assert_eq!(leader.status("/readyz").await, (200, "ok".to_owned()));
}

#[tokio::test]
async fn a_second_operator_on_a_taken_port_exits_naming_the_address() {
    let (_client, ns) = setup("health-port").await;
    let first = Operator::start(&ns, "10m");
    eventually(Duration::from_secs(30), "the first operator to be ready", || async {
        (first.status("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let addr = format!("127.0.0.1:{}", first.http_port);
    let started = Instant::now();
    let mut second = Operator::start_with(&ns, "10m", &["--http-addr", &addr]);
    let status = eventually(Duration::from_secs(10), "the second operator to exit", || {
        let status = second.exit_status();
        async move { status }
    })
    .await;
    println!("the second operator exited with {status} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
    let log = second.log_text();
    assert!(log.contains(&format!("artifact-operator: cannot listen on {addr}: Address already in use")), "{log}");
    assert!(!log.contains("starting the controllers"), "{log}");
    assert_eq!(first.status("/readyz").await.0, 200, "the first operator keeps its port");
}

#[test]
fn the_cli_refuses_durations_past_their_maximum() {
    for (flag, value) in [
        ("--resync-interval", "18446744073709551615s"),
        ("--resync-interval", "307445734561825861m"),
        ("--resync-interval", "25h"),
        ("--unhealthy-after", "18446744073709551615s"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_artifact-operator"))
            .args(["run", flag, value])
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(&format!("invalid value '{value}' for '{flag}")), "{stderr}");
        assert!(stderr.contains("longer than the maximum of 24h"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
