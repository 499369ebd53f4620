//! `gatehouse check`, `--version`, `--help`, quick-mode flag validation.

mod common;
use common::*;

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "ok.toml",
        &respond_config("http", "\"127.0.0.1:8080\"", "", "x"),
    );
    let (code, out, _) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "configuration OK");
}

#[test]
fn check_reports_every_error_with_line_and_column_and_exits_78() {
    let dir = tempdir();
    let text = "[server]\nstatus_interval = \"0s\"\nmax_connections = 0\n\n[[listener]]\nname = \"http\"\nbind = [\"localhost\"]\n\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"api\"\nrespond = { status = 200 }\n";
    let cfg = write(dir.path(), "bad.toml", text);
    let (code, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(!out.contains("configuration OK"));
    let file = cfg.display().to_string();
    for pos in ["2:19", "3:19", "7:9", "12:8"] {
        assert!(
            err.contains(&format!("{file}:{pos}: ")),
            "missing {pos} in:\n{err}"
        );
    }
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn check_reports_toml_syntax_errors_with_position() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "syntax.toml",
        "[server]\nshutdown_timeout = = \"30s\"\n",
    );
    let (code, _, err) = run_cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78));
    assert!(err.contains(&format!("{}:2:20: ", cfg.display())), "{err}");
}

#[test]
fn check_on_a_missing_explicit_file_exits_78() {
    let (code, _, err) = run_cli(&["check", "--config", "/nonexistent/gatehouse.toml"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("/nonexistent/gatehouse.toml"), "{err}");
}

#[test]
fn serve_with_a_bad_config_exits_78() {
    let dir = tempdir();
    let cfg = write(dir.path(), "bad.toml", "[[listener]]\nnam = \"x\"\n");
    let (code, _, err) = run_cli(&[
        "serve",
        "-c",
        cfg.to_str().unwrap(),
        "--log-target",
        "stderr",
    ]);
    assert_eq!(code, Some(78));
    assert!(err.contains("bad.toml:2:1"), "{err}");
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("gatehouse {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, Some(0));
    for word in ["serve", "check", "reload", "systemd"] {
        assert!(out.contains(word), "help mentions {word}: {out}");
    }
}

#[test]
fn quick_mode_flags_are_validated() {
    let (code, _, err) = run_cli(&["serve", "--listen", "localhost"]);
    assert_eq!(code, Some(2), "usage error: {err}");
    assert!(err.contains("neither IP:PORT"), "{err}");
    let (code, _, err) = run_cli(&["serve", "--proxy", "api=http://x:1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("must start with '/'"), "{err}");
    let (code, _, err) = run_cli(&["serve", "--proxy", "/api/=ftp://x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("upstream"), "{err}");
    let (code, _, err) = run_cli(&[
        "serve",
        "--root",
        "/nonexistent-docroot",
        "--log-target",
        "stderr",
    ]);
    assert_eq!(code, Some(78));
    assert!(err.contains("/nonexistent-docroot"), "{err}");
}

#[test]
fn reload_refuses_an_invalid_config_without_signalling() {
    let dir = tempdir();
    let cfg = write(dir.path(), "bad.toml", "[[listener]]\nname = 1\n");
    // pid 1 would be harmed by a stray SIGHUP in a container; validation comes first.
    let (code, _, err) = run_cli(&["reload", "--pid", "1", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78));
    assert!(err.contains("bad.toml:2:8"), "{err}");
}

#[test]
fn generate_man_page() {
    let (code, out, _) = run_cli(&["generate", "man"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(".TH gatehouse"),
        "{}",
        &out[..out.len().min(200)]
    );
}

#[test]
fn check_knows_the_socket_names_systemd_will_pass() {
    let dir = tempdir();
    let cfg = write(dir.path(), "ok.toml", &respond_config("web", "", "", "x"));
    let path = cfg.to_str().unwrap();
    let (code, _, err) = run_cli(&["check", "--config", path, "--fd-names", "http"]);
    assert_eq!(code, Some(78), "serve would exit 78 on a socket named http");
    assert!(err.contains("no [[listener]] is named \"http\""), "{err}");
    let (code, out, _) = run_cli(&["check", "--config", path, "--fd-names", "web"]);
    assert_eq!((code, out.trim()), (Some(0), "configuration OK"));
}

#[test]
fn man_page_is_section_8_with_its_own_command_list() {
    let (code, out, _) = run_cli(&["generate", "man"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(".TH gatehouse 8"),
        "{}",
        &out[..200.min(out.len())]
    );
    assert!(
        !out.contains("gatehouse\\-serve(1)"),
        "no references to missing pages"
    );
    assert!(
        out.contains(".SH EXAMPLES\n.nf\n"),
        "examples stay preformatted"
    );
}
