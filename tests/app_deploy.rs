//! Deployable apps (`proxy = { app = "shop" }`): the switch of the live instance over the
//! admin socket, against real upstream servers on real unix sockets, one per instance. New
//! requests go to the new instance from the moment the switch answers, requests in flight
//! finish on the old one (and are counted until they do), a deploy whose health check
//! fails changes nothing, and the choice survives a reload and a restart. systemd's part
//! of `gatehouse deploy` (starting and stopping the template units) is in the e2e step
//! `app-deploy`; here the instances run already (`--no-systemd`).

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the instances' sockets and gatehouse's state directory live.
struct World {
    _dir: tempfile::TempDir,
    run: PathBuf,
    state: PathBuf,
    admin: PathBuf,
    config: String,
}

impl World {
    fn new(extra: &str) -> World {
        let dir = tempdir();
        let run = dir.path().join("run");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let admin = dir.path().join("admin.sock");
        let config = format!(
            r#"
[[listener]]
name = "http"
[[listener]]
name = "admin"
role = "admin"
bind = ["unix:{admin}"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
proxy = {{ app = "shop", app_socket = "{run}/%i.sock", health_check_path = "/healthz", deploy_timeout = "5s", drain_timeout = "10s"{extra} }}
"#,
            admin = admin.display(),
            run = run.display(),
        );
        World {
            _dir: dir,
            run,
            state,
            admin,
            config,
        }
    }

    fn instance(&self, name: &str) -> UpstreamServer {
        UpstreamServer::start(Listen::unix(&self.run.join(format!("{name}.sock"))), name)
    }

    fn start(&self) -> (Server, u16) {
        start_http(
            &self.config,
            &[("STATE_DIRECTORY", &self.state.display().to_string())],
        )
    }

    fn switch(&self, instance: &str) -> Reply {
        post(
            &self.admin,
            "/apps/shop/switch",
            &format!(r#"{{"instance": "{instance}"}}"#),
        )
    }

    fn app(&self) -> serde_json::Value {
        let r = get_unix(&self.admin, "admin", "/apps/shop").expect("GET /apps/shop");
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("json")
    }

    fn in_flight(&self, instance: &str) -> u64 {
        let app = self.app();
        app["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == instance)
            .and_then(|i| i["in_flight"].as_u64())
            .unwrap_or(0)
    }

    fn deploy(&self, instance: &str, extra: &[&str]) -> (Option<i32>, String, String) {
        let admin = self.admin.display().to_string();
        let mut args = vec![
            "deploy",
            "shop",
            instance,
            "--admin",
            &admin,
            "--no-systemd",
        ];
        args.extend_from_slice(extra);
        run_cli(&args)
    }
}

fn post(admin: &Path, path: &str, json: &str) -> Reply {
    let mut s = std::os::unix::net::UnixStream::connect(admin).expect("admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    exchange(&mut s, req.as_bytes()).expect("admin answer")
}

fn served_by(port: u16, path: &str) -> (u16, String) {
    let r = get_tcp(port, "shop.test", path).expect("request");
    (r.status, r.header("x-upstream").unwrap_or_default())
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sequential clients, each recording which instance answered, in order.
fn client_loops(
    port: u16,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(u16, String)>>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    seen.push(served_by(port, "/"));
                }
                seen
            })
        })
        .collect()
}

#[test]
fn the_switch_is_atomic_and_requests_in_flight_finish_on_the_old_instance() {
    let world = World::new("");
    let _v1 = world.instance("v1");
    let _v2 = world.instance("v2");
    let (_server, port) = world.start();

    // Never deployed: nothing to send to.
    let (status, _) = served_by(port, "/");
    assert_eq!(status, 503);
    let r = world.switch("v1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served_by(port, "/"), (200, "v1".into()));

    // A slow request holds v1 across the switch.
    let slow = std::thread::spawn(move || served_by(port, "/slow/5000"));
    wait_until("the slow request in flight on v1", || {
        world.in_flight("v1") == 1
    });

    let stop = Arc::new(AtomicBool::new(false));
    let loops = client_loops(port, 3, &stop);
    std::thread::sleep(Duration::from_millis(300));
    let r = world.switch("v2");
    assert_eq!(r.status, 200, "{}", r.text());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(answer["previous"], "v1");
    // From the moment the switch answered, every new request goes to v2.
    for _ in 0..20 {
        assert_eq!(served_by(port, "/"), (200, "v2".into()));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        let seen = l.join().unwrap();
        assert!(seen.iter().all(|(s, _)| *s == 200), "{seen:?}");
        // One switch point per client: v1… then v2…, never back.
        let first_v2 = seen
            .iter()
            .position(|(_, u)| u == "v2")
            .expect("v2 reached");
        assert!(seen[..first_v2].iter().all(|(_, u)| u == "v1"), "{seen:?}");
        assert!(seen[first_v2..].iter().all(|(_, u)| u == "v2"), "{seen:?}");
        assert!(first_v2 > 0, "the loop saw v1 before the switch");
    }
    // The slow request is still v1's, and counted there.
    let app = world.app();
    assert_eq!(app["live"], "v2");
    assert_eq!(world.in_flight("v1"), 1, "{app}");
    assert_eq!(slow.join().unwrap(), (200, "v1".into()));
    wait_until("v1 drained", || world.in_flight("v1") == 0);

    let live = |i: &str| {
        metric(
            &world.admin,
            &format!("gatehouse_app_instance_live{{app=\"shop\",instance=\"{i}\"}}"),
        )
    };
    assert_eq!(live("v2"), 1.0);
    assert_eq!(live("v1"), 0.0);
}

#[test]
fn a_deploy_whose_health_check_fails_changes_nothing() {
    let world = World::new("");
    let _v1 = world.instance("v1");
    let v3 = world.instance("v3");
    v3.set_healthy(false);
    let (_server, port) = world.start();
    assert_eq!(world.switch("v1").status, 200);

    let (code, out, err) = world.deploy("v3", &["--deploy-timeout", "1s"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("did not answer GET /healthz with 2xx"),
        "{err}"
    );
    assert!(err.contains("nothing switched: v1 keeps serving"), "{err}");
    assert!(
        v3.state.health_checks.load(Ordering::SeqCst) > 1,
        "checked until the deadline"
    );
    assert_eq!(served_by(port, "/"), (200, "v1".into()));
    let app = world.app();
    assert_eq!(app["live"], "v1");
    assert_eq!(app["last_deploy"]["result"], "failed", "{app}");
    assert_eq!(app["last_deploy"]["to"], "v3");

    // An instance with nothing listening fails the same way.
    let (code, _, err) = world.deploy("v9", &["--deploy-timeout", "300ms"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(world.app()["live"], "v1");
}

#[test]
fn deploy_waits_for_the_old_instance_then_reports() {
    let world = World::new("");
    let _v1 = world.instance("v1");
    let _v2 = world.instance("v2");
    let (_server, port) = world.start();
    let (code, out, err) = world.deploy("v1", &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");

    let slow = std::thread::spawn(move || (served_by(port, "/slow/1200"), Instant::now()));
    wait_until("the slow request in flight on v1", || {
        world.in_flight("v1") == 1
    });
    let (code, out, err) = world.deploy("v2", &[]);
    let deployed = Instant::now();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("switched: new requests go to shop@v2 (was shop@v1)"),
        "{out}"
    );
    assert!(out.contains("shop@v1 finished its requests"), "{out}");
    let (answer, answered) = slow.join().unwrap();
    assert_eq!(answer, (200, "v1".into()));
    // The deploy returned only once v1 had answered (the client reads a moment later).
    assert!(
        deployed + Duration::from_millis(200) > answered,
        "deploy did not wait"
    );
    assert_eq!(served_by(port, "/"), (200, "v2".into()));
    let app = world.app();
    assert_eq!(app["last_deploy"]["result"], "ok", "{app}");
    assert_eq!(app["last_deploy"]["from"], "v1");

    // `gatehouse status` shows it; deploying the live instance again is a no-op.
    let admin = world.admin.display().to_string();
    let (code, status, _) = run_cli(&["status", "--admin", &admin]);
    assert_eq!(code, Some(0));
    assert!(status.contains("app shop: live v2"), "{status}");
    assert!(
        status.contains("last deploy") && status.contains("v1 -> v2: ok"),
        "{status}"
    );
    let (code, out, _) = world.deploy("v2", &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("already live"), "{out}");
}

#[test]
fn the_live_instance_survives_a_reload_and_a_restart() {
    let world = World::new("");
    let _v1 = world.instance("v1");
    let _v2 = world.instance("v2");
    let (mut server, port) = world.start();
    assert_eq!(world.switch("v1").status, 200);
    assert_eq!(world.switch("v2").status, 200);

    // A reload builds new routes; the app keeps its live instance.
    let cfg = config_path(&server);
    let changed = world
        .config
        .replace("drain_timeout = \"10s\"", "drain_timeout = \"20s\"");
    std::fs::write(&cfg, changed).unwrap();
    server.notify().clear();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("reloaded");
    assert_eq!(world.app()["drain_timeout_ms"], 20000);
    assert_eq!(served_by(port, "/"), (200, "v2".into()));

    // A new process (a restart, or socket activation after an idle exit) reads it back.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let saved = std::fs::read_to_string(world.state.join("apps/shop.json")).unwrap();
    assert!(saved.contains("\"live\": \"v2\""), "{saved}");
    let (_again, port) = world.start();
    assert_eq!(served_by(port, "/"), (200, "v2".into()));
    assert_eq!(world.app()["live"], "v2");
}

#[test]
fn the_live_instance_survives_an_idle_exit() {
    let world = World::new("");
    let _v2 = world.instance("v2");
    let config = format!("[server]\nidle_exit_after = \"1s\"\n{}", world.config);
    let state = world.state.display().to_string();
    let (mut server, _) = start_http(&config, &[("STATE_DIRECTORY", &state)]);
    assert_eq!(world.switch("v2").status, 200);
    // Admin connections are not activity: with no client, it exits by itself.
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("idle exit");
    assert!(status.success(), "{status:?}");
    // The next start (socket activation) serves v2 at once.
    let (_again, port) = start_http(&config, &[("STATE_DIRECTORY", &state)]);
    assert_eq!(served_by(port, "/"), (200, "v2".into()));
}

#[test]
fn a_switch_that_cannot_be_persisted_is_refused() {
    let world = World::new("");
    let _v1 = world.instance("v1");
    let _v2 = world.instance("v2");
    let (_server, port) = world.start();
    assert_eq!(world.switch("v1").status, 200);
    // The state directory's apps/ is replaced by a file: nothing can be written there.
    let apps = world.state.join("apps");
    std::fs::remove_dir_all(&apps).unwrap();
    std::fs::write(&apps, "not a directory").unwrap();
    let r = world.switch("v2");
    assert_eq!(r.status, 500, "{}", r.text());
    // A switch that expects another live instance (a concurrent deploy won) is refused.
    let r = post(
        &world.admin,
        "/apps/shop/switch",
        r#"{"instance": "v2", "expect": "v0"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("v1 is live now"), "{}", r.text());
    // So is one that saw no live instance (a first deploy racing another): `null`, not absent.
    let r = post(
        &world.admin,
        "/apps/shop/switch",
        r#"{"instance": "v2", "expect": null}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(served_by(port, "/"), (200, "v1".into()));
    assert_eq!(world.app()["live"], "v1");
}

#[test]
fn only_a_unix_admin_socket_may_switch() {
    let world = World::new("");
    let admin_port = free_port();
    let metrics = format!(
        "[[listener]]\nname = \"metrics\"\nrole = \"admin\"\nbind = [\"127.0.0.1:{admin_port}\"]\n[[site]]"
    );
    let config = world.config.replacen("[[site]]", &metrics, 1);
    let (_server, _port) = start_http(
        &config,
        &[("STATE_DIRECTORY", &world.state.display().to_string())],
    );
    let body = r#"{"instance": "v1"}"#;
    let req = format!(
        "POST /apps/shop/switch HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = connect_eventually(admin_port);
    let r = exchange(&mut s, req.as_bytes()).unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(world.app()["live"].is_null());
    let r = get_tcp(admin_port, "admin", "/apps").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(world.switch("nope/../x").status, 400);
    assert_eq!(
        get_unix(&world.admin, "admin", "/apps/unknown")
            .unwrap()
            .status,
        404
    );
}

fn connect_eventually(port: u16) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn app_routes_are_checked_like_the_rest_of_the_file() {
    let dir = tempdir();
    let cases = [
        (
            r#"proxy = { app = "shop", upstreams = ["unix:/run/x.sock"] }"#,
            "1:37:",
            "not both",
        ),
        (r#"proxy = { app = "shop/x" }"#, "1:17:", "not an app name"),
        (
            r#"proxy = { app = "shop", app_socket = "/run/shop.sock" }"#,
            "1:38:",
            "%i",
        ),
        (
            r#"proxy = { drain_timeout = "5s" }"#,
            "1:9:",
            "needs `upstreams` or `app`",
        ),
        (
            r#"proxy = { upstreams = ["unix:/run/x.sock"], deploy_timeout = "5s" }"#,
            "1:62:",
            "belongs to `app` routes",
        ),
        (
            r#"proxy = { app = "shop", deploy_timeout = "soon" }"#,
            "1:42:",
            "deploy_timeout",
        ),
    ];
    for (route, position, message) in cases {
        let text = format!("{route}\n");
        let body = format!(
            "[[listener]]\nname = \"http\"\nbind = [\"127.0.0.1:1\"]\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n{text}"
        );
        let path = write(dir.path(), "g.toml", &body);
        let (code, _, err) = run_cli(&["check", "--config", &path.display().to_string()]);
        assert_eq!(code, Some(78), "{route}: {err}");
        let want = format!("g.toml:{}", position.replacen("1:", "8:", 1));
        assert!(
            err.contains(&want) && err.contains(message),
            "{route}: want {want} {message}: {err}"
        );
    }
}
