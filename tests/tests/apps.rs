//! Real applications resetting connections the way they do in production, each in a network
//! namespace of its own, against the test process's rstwatch daemon: the cause on both sides, the
//! owner *process* on both sides (`comm`), and the error the client got
//! (`rstwatch_socket_errors_total`); what the applications printed goes into the test log
//! (`cargo test -p rstwatch-tests --test apps -- --nocapture`). Needs root; installs nginx,
//! redis-server, haproxy and Debian's Apache HttpClient 4.5 when they are missing.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Result, ensure};
use rstwatch_tests::apps::{AppError, AppTest, Reset, START, event, java_client, source};

/// Ports 17481–17489 belong to these tests (outside the benchmark's 20000–29999 storms).
const NGINX_KEEPALIVE_PORT: u16 = 17481;
const UPLOAD_PORT: u16 = 17482;
const NGINX_BODY_PORT: u16 = 17483;
const HAPROXY_PORT: u16 = 17484;
const REDIS_PORT: u16 = 17485;
/// Upstreams the proxies point at; nothing reaches them in these tests.
const UNUSED_UPSTREAM: u16 = 17489;

const CLIENT: Duration = Duration::from_secs(60);

fn nginx_conf(t: &AppTest, http: &str) -> Result<String> {
    let dir = t.dir.display();
    t.write(
        "nginx.conf",
        &format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n{http}\n}}\n"
        ),
    )
}

fn wait_until(what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
    rstwatch_tests::process::wait_until(what, START, done)
}

fn printed(app: &rstwatch_tests::apps::App) -> String {
    let out = app.output();
    eprintln!("{} printed:\n{}", app.name, out.trim_end());
    out
}

/// A JVM service's pooled keep-alive connection (Apache HttpClient 4.5, no stale check, no
/// retries) reused after nginx's `keepalive_timeout 1s` closed it. The request runs on a pool
/// thread named `order-service-worker-7`: the label must still say `java`.
#[test]
fn jvm_pool_reuses_a_keepalive_connection_nginx_closed() -> Result<()> {
    let mut t = AppTest::new("nginx_keepalive", NGINX_KEEPALIVE_PORT)?;
    let conf = nginx_conf(
        &t,
        &format!(
            "  keepalive_timeout 1s;\n  server {{ listen 127.0.0.1:{NGINX_KEEPALIVE_PORT}; location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    )?;
    let dir = t.dir.to_string_lossy().into_owned();
    let _nginx = t.start("nginx", "nginx", &["-c", &conf, "-p", &dir])?;
    t.wait_listening(NGINX_KEEPALIVE_PORT)?;
    let url = format!("http://127.0.0.1:{NGINX_KEEPALIVE_PORT}/");
    let args = java_client(&["keepalive", &url, "order-service-worker-7", "2500"])?;
    let mut client = t.start("java", "java", &args)?;
    client.wait_exit(CLIENT)?;
    let out = printed(&client);
    ensure!(
        out.contains("request 1: HTTP/1.1 200 OK"),
        "the first request must succeed"
    );
    ensure!(
        out.contains("request 2: org.apache.http.NoHttpResponseException"),
        "the reused connection must fail"
    );

    let events = t.expect(
        &[
            Reset("sent", "data_after_close", "nginx"),
            Reset("received", "stale_connection", "java"),
        ],
        &[AppError("EPIPE", "java")],
    )?;
    let rx = event(&events, "received")?;
    ensure!(
        rx["thread"] == "order-service-w",
        "the thread is named in the event: {rx}"
    );
    Ok(())
}

/// A JVM client uploads 4 MiB; the upload service (a Python http.server that read 64 KiB and is
/// "processing") is killed with SIGKILL mid-request.
#[test]
fn jvm_upload_to_a_server_killed_mid_request() -> Result<()> {
    let mut t = AppTest::new("killed_upload", UPLOAD_PORT)?;
    let server_py = source("upload_server.py");
    let mut server = t.start(
        "upload-server",
        "python3",
        &[server_py.to_string_lossy().into_owned(), UPLOAD_PORT.to_string()],
    )?;
    t.wait_listening(UPLOAD_PORT)?;
    let url = format!("http://127.0.0.1:{UPLOAD_PORT}/upload");
    let args = java_client(&["upload", &url, "upload-worker-3", "4"])?;
    let mut client = t.start("java", "java", &args)?;
    server.wait_printed("processing", START)?;
    // The rest of the body piles up unread in the server's receive queue.
    let filter = format!("sport = :{UPLOAD_PORT}");
    wait_until("unread upload bytes on the server", || {
        let ss = t.ns.exec(&["ss", "-Htn", "state", "established", &filter])?;
        // Recv-Q is the first number (`ss` leaves the State column out when asked for one state).
        Ok(ss
            .split_whitespace()
            .find_map(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
            > 0)
    })?;
    let status = server.kill9()?;
    eprintln!("upload server (pid {}) killed: {status}", server.pid());
    printed(&server);
    client.wait_exit(CLIENT)?;
    let out = printed(&client);
    ensure!(
        out.contains("upload: java.net.SocketException: Connection reset")
            || out.contains("upload: java.net.SocketException: Broken pipe"),
        "the client must see the reset"
    );

    let events = t.expect(
        &[
            Reset("sent", "close_with_unread_data", "python3"),
            Reset("received", "reset_before_response", "java"),
        ],
        &[AppError("ECONNRESET", "java")],
    )?;
    let rx = event(&events, "received")?;
    ensure!(rx["thread"] == "upload-worker-3", "{rx}");
    Ok(())
}

/// nginx `client_body_timeout 1s` with `reset_timedout_connection on`: a client that stalls in
/// the middle of its request body (curl streaming a chunked upload from a pipe) is reset.
#[test]
fn nginx_resets_a_request_whose_body_timed_out() -> Result<()> {
    let mut t = AppTest::new("nginx_body_timeout", NGINX_BODY_PORT)?;
    let conf = nginx_conf(
        &t,
        &format!(
            "  client_body_timeout 1s;\n  reset_timedout_connection on;\n\
             server {{ listen 127.0.0.1:{NGINX_BODY_PORT}; location / {{ proxy_pass http://127.0.0.1:{UNUSED_UPSTREAM}; }} }}"
        ),
    )?;
    let dir = t.dir.to_string_lossy().into_owned();
    let _nginx = t.start("nginx", "nginx", &["-c", &conf, "-p", &dir])?;
    t.wait_listening(NGINX_BODY_PORT)?;
    // `Expect:` off: with 100-continue nginx first answers "100 Continue", and a reset after those
    // 25 bytes reads as peer_reset (the kernel counts bytes, not interim responses).
    let url = format!("http://127.0.0.1:{NGINX_BODY_PORT}/upload");
    let mut curl = t.start(
        "curl",
        "curl",
        &[
            "-sS",
            "-H",
            "Expect:",
            "-X",
            "POST",
            "-T",
            "-",
            &url,
            "-o",
            "/dev/null",
        ],
    )?;
    curl.stdin()?
        .write_all(b"the first part of a body that never ends ")?;
    curl.stdin()?.flush()?;
    // nginx logs nothing for a body timeout: watch the client's connection instead.
    let filter = format!("dport = :{NGINX_BODY_PORT}");
    let open = || -> Result<bool> {
        Ok(!t
            .ns
            .exec(&["ss", "-Htn", "state", "established", &filter])?
            .trim()
            .is_empty())
    };
    wait_until("curl's connection to nginx", open)?;
    wait_until("nginx to drop the stalled request", || Ok(!open()?))?;
    // curl blocks reading its stdin and learns of the reset on its next send: the end of the body.
    curl.close_stdin();
    let status = curl.wait_exit(CLIENT)?;
    let out = printed(&curl);
    ensure!(
        out.contains("Connection reset by peer"),
        "curl ({status}) must see the reset"
    );

    t.expect(
        &[
            Reset("sent", "linger_zero_close", "nginx"),
            Reset("received", "reset_before_response", "curl"),
        ],
        &[AppError("ECONNRESET", "curl")],
    )?;
    Ok(())
}

/// haproxy in front of an SMTP relay rejects a client network (`tcp-request connection reject`):
/// the client (curl, waiting for the server's SMTP greeting) is reset before anything was said.
#[test]
fn haproxy_rejects_a_connection() -> Result<()> {
    let mut t = AppTest::new("haproxy_reject", HAPROXY_PORT)?;
    let cfg = t.write(
        "haproxy.cfg",
        &format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             frontend smtp_in\n  bind 127.0.0.1:{HAPROXY_PORT}\n  acl blocked src 127.0.0.0/8\n  tcp-request connection reject if blocked\n  default_backend relay\n\
             backend relay\n  server relay 127.0.0.1:{UNUSED_UPSTREAM}\n"
        ),
    )?;
    let _haproxy = t.start("haproxy", "haproxy", &["-f", &cfg, "-db"])?;
    t.wait_listening(HAPROXY_PORT)?;
    let url = format!("smtp://127.0.0.1:{HAPROXY_PORT}/");
    let mut curl = t.start("curl", "curl", &["-sS", &url])?;
    let status = curl.wait_exit(CLIENT)?;
    let out = printed(&curl);
    ensure!(!status.success(), "curl must fail");

    t.expect(
        &[
            Reset("sent", "linger_zero_close", "haproxy"),
            Reset("received", "handshake_reset", "curl"),
        ],
        &[AppError("ECONNRESET", "curl")],
    )?;
    ensure!(
        out.contains("curl: (7)") || out.contains("curl: (56)"),
        "curl's error"
    );
    Ok(())
}

/// redis-server `timeout 1` closes an idle client; redis-cli sends its next command on the
/// closed connection.
#[test]
fn redis_idle_timeout_then_a_client_write() -> Result<()> {
    let mut t = AppTest::new("redis_timeout", REDIS_PORT)?;
    let port = REDIS_PORT.to_string();
    let _redis = t.start(
        "redis-server",
        "redis-server",
        &[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--timeout",
            "1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    )?;
    t.wait_listening(REDIS_PORT)?;
    let mut cli = t.start("redis-cli", "redis-cli", &["-p", &port])?;
    cli.stdin()?.write_all(b"PING\n")?;
    cli.stdin()?.flush()?;
    cli.wait_printed("PONG", START)?;
    // Wait for the server's idle close (its FIN puts the client in CLOSE_WAIT).
    let filter = format!("dport = :{REDIS_PORT}");
    wait_until("redis to close the idle client", || {
        Ok(!t
            .ns
            .exec(&["ss", "-Htn", "state", "close-wait", &filter])?
            .trim()
            .is_empty())
    })?;
    cli.stdin()?.write_all(b"PING\n")?;
    cli.stdin()?.flush()?;
    cli.close_stdin();
    cli.wait_exit(CLIENT)?;
    let out = printed(&cli);
    ensure!(out.contains("Server closed the connection"), "redis-cli's error");

    t.expect(
        &[
            Reset("sent", "data_after_close", "redis-server"),
            Reset("received", "stale_connection", "redis-cli"),
        ],
        &[AppError("EPIPE", "redis-cli")],
    )?;
    Ok(())
}
