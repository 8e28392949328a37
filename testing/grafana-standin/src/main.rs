//! # grafana-standin — a test double for Grafana
//!
//! Grafana cannot be installed on pug's development and CI machines, so pug's tests run this
//! binary in its place. It is written from Grafana's *documented* behaviour (see
//! `shared/research/multitenant.md` §2 and the Grafana sources it cites) and implements only the
//! surface pug touches. It is not Grafana and not a replacement for it: no dashboards, no SQL,
//! no plugins, no real users.
//!
//! Implemented surface (source in parentheses):
//! * CLI (`pkg/cmd/grafana`): `grafana server --homepath DIR --config INI [--pidfile P]
//!   [--packaging X] [cfg:default.section.key=v …] [cfg:section.key=v …]`, the legacy
//!   `grafana-server --homepath …`, `grafana --version`/`-v` (`grafana version X`) and
//!   `grafana server -v` (`Version X (commit: standin, branch: HEAD)`). Flags accept `-f`,
//!   `--f`, `--f=v` and `--f v`; like Go's flag parser, flag parsing stops at the first
//!   positional argument (a flag after one is an error here, silently ignored by Grafana).
//!   The program name (argv\[0\]) may be `grafana`, `grafana-server` or `grafana-standin`.
//! * Settings (`pkg/setting/setting.go`, `conf/defaults.ini`, `packaging/docker/run.sh`):
//!   defaults < `cfg:default.*` < ini < `GF_<SECTION>_<KEY>` / `…__FILE` < `cfg:*`; see
//!   [`settings`] for the keys honoured.
//! * HTTP (`pkg/api/http_server.go`, auth proxy docs): `/api/health`, `/healthz`, `/metrics`,
//!   sub-path serving, auth proxy with whitelist, `/api/user`, Grafana Live WebSocket path; see
//!   [`server`] and [`auth`].
//! * Test-only failure modes via `[standin] mode` (`GF_STANDIN_MODE`): `ok`, `crash`, `hang`,
//!   `unhealthy_db`, `slow_start`, plus `crash_after_ms`, `start_delay_ms`, `ignore_sigterm`.
//! * Version: `STANDIN_VERSION`, else the first line of `<homepath>/VERSION`, else 11.3.0.
//!
//! This module owns the command line, start-up sequence, failure modes and signal handling.

// A test double: it reads the clock where Grafana does, not through a seam.
#![allow(clippy::disallowed_methods)]

mod auth;
mod database;
mod logging;
mod provisioning;
mod render_pages;
mod rendering;
mod server;
mod settings;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use settings::{LoadInput, Mode, Settings, COMMIT};

/// Parsed `server` command line.
#[derive(Debug, Default)]
struct ServerArgs {
    homepath: Option<PathBuf>,
    config: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    /// Positional arguments (`cfg:…` ones are used, others ignored as Grafana does).
    positional: Vec<String>,
    version: bool,
}

#[derive(Debug)]
enum Command {
    Help,
    /// `grafana --version`
    AppVersion,
    Server(ServerArgs),
}

const VALUE_FLAGS: &[&str] = &[
    "config",
    "homepath",
    "pidfile",
    "packaging",
    "configOverrides",
    "profile-addr",
    "profile-port",
    "profile-block-rate",
    "profile-mutex-rate",
    "tracing-file",
];
const BOOL_FLAGS: &[&str] = &["v", "version", "vv", "profile", "tracing"];

fn parse_server_args(args: &[String]) -> Result<ServerArgs> {
    let mut out = ServerArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if !out.positional.is_empty() || arg == "--" || !arg.starts_with('-') || arg == "-" {
            if arg == "--" && out.positional.is_empty() {
                out.positional.extend(it.by_ref().cloned());
                break;
            }
            if out.positional.is_empty() || !arg.starts_with('-') {
                out.positional.push(arg.clone());
                continue;
            }
            bail!(
                "flag {arg} comes after the positional argument {:?}: Grafana stops parsing \
                 flags there and would ignore it",
                out.positional[0]
            );
        }
        let body = arg.trim_start_matches('-');
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if BOOL_FLAGS.contains(&name) {
            if matches!(name, "v" | "version") {
                out.version = !matches!(inline.as_deref(), Some("false" | "0"));
            }
            continue;
        }
        if !VALUE_FLAGS.contains(&name) {
            bail!("flag provided but not defined: -{name}");
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .with_context(|| format!("flag needs an argument: -{name}"))?,
        };
        match name {
            "config" => out.config = Some(PathBuf::from(value)),
            "homepath" => out.homepath = Some(PathBuf::from(value)),
            "pidfile" => out.pidfile = Some(PathBuf::from(value)),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_command(argv0: &str, args: &[String]) -> Result<Command> {
    let prog = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("grafana");
    if prog.starts_with("grafana-server") {
        return Ok(Command::Server(parse_server_args(args)?));
    }
    match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "-help" | "help") => Ok(Command::Help),
        Some("-v" | "--version" | "-version") => Ok(Command::AppVersion),
        Some("server") => Ok(Command::Server(parse_server_args(&args[1..])?)),
        // Legacy style without the subcommand: `grafana-standin --homepath …`.
        Some(a) if a.starts_with('-') => Ok(Command::Server(parse_server_args(args)?)),
        Some(other) => bail!(
            "command {other:?} is not implemented by grafana-standin (a test double that \
             implements only `grafana server`)"
        ),
    }
}

const HELP: &str = "NAME:
   grafana - Grafana server and command line interface (grafana-standin test double)

USAGE:
   grafana [global options] command [command options]

COMMANDS:
   server   run the grafana server (test double: health, auth proxy, sub path)

GLOBAL OPTIONS:
   --help, -h     show help
   --version, -v  print the version
";

fn env_snapshot() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Grafana's fatal start-up error output, then exit 1.
fn fatal(err: &anyhow::Error) -> ! {
    let msg = format!("{err:#}");
    logging::error("server", "Server shutdown", &[("error", &msg)]);
    eprintln!("Error: ✗ {msg}");
    std::process::exit(1);
}

fn main() {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_else(|| "grafana".to_string());
    let args: Vec<String> = argv.collect();
    let env = env_snapshot();
    let command = match parse_command(&argv0, &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Incorrect Usage: {e:#}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    let home_for_version = |a: Option<&ServerArgs>| {
        a.and_then(|a| a.homepath.clone())
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default())
    };
    match command {
        Command::Help => print!("{HELP}"),
        Command::AppVersion => println!(
            "grafana version {}",
            settings::resolve_version(&home_for_version(None), &env)
        ),
        Command::Server(a) if a.version => println!(
            "Version {} (commit: {COMMIT}, branch: HEAD)",
            settings::resolve_version(&home_for_version(Some(&a)), &env)
        ),
        Command::Server(a) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            if let Err(e) = rt.block_on(run_server(a, env)) {
                fatal(&e);
            }
        }
    }
}

/// Resolves when SIGINT (or SIGTERM unless ignored) arrives; publishes the reason.
fn spawn_signal_watch(ignore_sigterm: bool) -> Result<watch::Receiver<Option<&'static str>>> {
    let (tx, rx) = watch::channel(None);
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tokio::spawn(async move {
        let reason = loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_sigterm {
                        logging::warn("server", "Ignoring SIGTERM ([standin] ignore_sigterm)", &[]);
                        continue;
                    }
                    break "System signal: terminated";
                }
                _ = int.recv() => break "System signal: interrupt",
            }
        };
        logging::info("server", "Shutdown started", &[("reason", reason)]);
        let _ = tx.send(Some(reason));
    });
    Ok(rx)
}

async fn signalled(rx: &mut watch::Receiver<Option<&'static str>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

async fn run_server(args: ServerArgs, env: HashMap<String, String>) -> Result<()> {
    let started = SystemTime::now();
    let home = match args.homepath {
        Some(h) => h,
        None => std::env::current_dir().context("no --homepath and no working directory")?,
    };
    let mut settings = Settings::load(&LoadInput {
        home: &home,
        config: args.config.as_deref(),
        cfg_args: &args.positional,
        env: &env,
    })?;
    let mut shutdown = spawn_signal_watch(settings.standin.ignore_sigterm)?;

    for dir in [
        &settings.paths.data,
        &settings.paths.logs,
        &settings.paths.plugins,
        &settings.paths.provisioning,
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    logging::open_file(&settings.paths.logs).with_context(|| {
        format!(
            "failed to open log file in {}",
            settings.paths.logs.display()
        )
    })?;
    log_startup(&settings);

    if let Some(pidfile) = &args.pidfile {
        std::fs::write(pidfile, std::process::id().to_string())
            .with_context(|| format!("failed to write pidfile {}", pidfile.display()))?;
    }

    // The admin account is the one in the database (seeded on first start, as Grafana does).
    let admin = database::open(
        &settings.database,
        database::Admin {
            login: settings.admin_user.clone(),
            email: settings.admin_email.clone(),
            password_sha256: settings.admin_password.clone(),
        },
    )?;
    settings.admin_user = admin.login;
    settings.admin_email = admin.email;
    let admin_password_sha256 = admin.password_sha256;
    if !database::healthy(&settings.database).await {
        logging::error(
            "sqlstore",
            "Database is not reachable; /api/health will report failing",
            &[("dbtype", &format!("{:?}", settings.database))],
        );
    }

    if let Some(after) = settings.standin.crash_after {
        let mode = settings.standin.mode.as_str();
        let crash = async move {
            tokio::time::sleep(after).await;
            let msg = format!("standin: crash requested ([standin] mode={mode})");
            logging::error("server", "Server shutdown", &[("error", &msg)]);
            eprintln!("Error: ✗ {msg}");
            std::process::exit(1);
        };
        if after.is_zero() {
            crash.await;
        } else {
            tokio::spawn(crash);
        }
    }

    if settings.standin.mode == Mode::Hang {
        logging::info("standin", "mode=hang: never binding the HTTP port", &[]);
        signalled(&mut shutdown).await;
        std::process::exit(0);
    }
    if let Some(delay) = settings.standin.start_delay {
        logging::info(
            "standin",
            "Delaying start",
            &[("start_delay_ms", &delay.as_millis().to_string())],
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = signalled(&mut shutdown) => std::process::exit(0),
        }
    }

    let host = if settings.http_addr.is_empty() {
        "0.0.0.0"
    } else {
        settings.http_addr.as_str()
    };
    let addr = format!("{host}:{}", settings.http_port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("failed to open listener on address {addr}"))?;
    let local = listener.local_addr()?;
    logging::info(
        "http.server",
        "HTTP Server Listen",
        &[
            ("address", &local.to_string()),
            ("protocol", "http"),
            ("subUrl", &settings.app_sub_url),
            ("socket", ""),
        ],
    );

    let state = Arc::new(server::AppState {
        settings,
        admin_password_sha256,
        started,
    });
    let app = server::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let mut graceful = shutdown.clone();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { signalled(&mut graceful).await })
            .await
    });
    signalled(&mut shutdown).await;
    // Open WebSockets would keep a graceful shutdown waiting; Grafana gives up too.
    let _ = tokio::time::timeout(Duration::from_secs(2), serve).await;
    std::process::exit(0);
}

fn log_startup(s: &Settings) {
    logging::info(
        "settings",
        "Starting Grafana",
        &[
            ("version", &s.version),
            ("commit", COMMIT),
            ("branch", "HEAD"),
            ("compiled", "standin"),
        ],
    );
    for f in &s.provenance.files {
        logging::info(
            "settings",
            "Config loaded from",
            &[("file", &f.display().to_string())],
        );
    }
    for v in &s.provenance.env {
        logging::info(
            "settings",
            "Config overridden from Environment variable",
            &[("var", &format!("{v}=*********"))],
        );
    }
    for a in &s.provenance.args {
        logging::info(
            "settings",
            "Config overridden from command line",
            &[("arg", a)],
        );
    }
    for (what, p) in [
        ("Path Home", &s.paths.home),
        ("Path Data", &s.paths.data),
        ("Path Logs", &s.paths.logs),
        ("Path Plugins", &s.paths.plugins),
        ("Path Provisioning", &s.paths.provisioning),
    ] {
        logging::info("settings", what, &[("path", &p.display().to_string())]);
    }
    logging::info(
        "standin",
        "Test double mode",
        &[("mode", s.standin.mode.as_str())],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn cli_forms() {
        let c = parse_command(
            "/x/grafana",
            &s(&[
                "server",
                "--homepath",
                "/h",
                "-config=/c.ini",
                "cfg:default.paths.data=/d",
            ]),
        )
        .unwrap();
        let Command::Server(a) = c else { panic!() };
        assert_eq!(a.homepath.unwrap(), PathBuf::from("/h"));
        assert_eq!(a.config.unwrap(), PathBuf::from("/c.ini"));
        assert_eq!(a.positional, s(&["cfg:default.paths.data=/d"]));

        let Command::Server(a) = parse_command("grafana-server", &s(&["-homepath", "/h"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.homepath.unwrap(), PathBuf::from("/h"));
        assert!(matches!(
            parse_command("grafana", &s(&["-v"])).unwrap(),
            Command::AppVersion
        ));
        let Command::Server(a) = parse_command("grafana", &s(&["server", "-v"])).unwrap() else {
            panic!()
        };
        assert!(a.version);
        assert!(parse_command("grafana", &s(&["server", "--nope"])).is_err());
        assert!(parse_command("grafana", &s(&["server", "cfg:a.b=c", "--config", "x"])).is_err());
        assert!(parse_command("grafana", &s(&["cli", "plugins"])).is_err());
    }
}
