//! The `tether` command line: run a router, check a config, generate
//! certificates, run the local multi-site demo, or manage a running router
//! over AMQP (`status`, `query`, `create`, `delete`; see
//! [`tether_router::cli_mgmt`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_router::cli_mgmt::{self, MgmtArgs};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Tether: a Layer-7 service interconnect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a router from a config file, or check the file with --check.
    Router {
        /// The router's TOML config file.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "check",
            required_unless_present = "check"
        )]
        config: Option<PathBuf>,
        /// Validate FILE (syntax, keys, TLS files) and exit without starting.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
    /// Generate a CA and one certificate per router name into a folder.
    Certs {
        /// Folder to write ca.pem, ca-key.pem, NAME.pem and NAME-key.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Router names (each gets a certificate).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Simulate a network of routers on a virtual clock with the router's own
    /// routing engine, then verify every route against shortest paths.
    Sim {
        /// Number of routers (generated topologies).
        #[arg(long)]
        routers: Option<usize>,
        /// ring, grid, random, or a topology file (TOML: routers, links, costs).
        #[arg(long, default_value = "random")]
        topology: String,
        /// Mean links per router (random topology).
        #[arg(long)]
        degree: Option<usize>,
        /// Seed for the generated topology and failures.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fail K random links, or the listed links `a-b,c-d`, after convergence.
        #[arg(long, value_name = "K|a-b,...")]
        fail_links: Option<String>,
        /// One-way latency of every link in the simulation.
        #[arg(long)]
        latency_ms: Option<u64>,
    },
    /// Start three linked routers on loopback with a service, and drive traffic.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// First of the loopback ports the demo uses (it takes ten).
        #[arg(long, default_value_t = 47100)]
        base_port: u16,
    },
    /// Show a router: its links, the routers it reaches, addresses, TCP
    /// listeners and connectors (over AMQP management).
    Status {
        #[command(flatten)]
        mgmt: MgmtArgs,
    },
    /// List the entities of a management type (all attributes unless named).
    Query {
        /// Entity type: short (tcpListener, connection, address, router.node, ...)
        /// or full (io.tether.router.connection).
        #[arg(value_name = "TYPE")]
        entity_type: String,
        /// Attributes to show (default: all).
        #[arg(value_name = "ATTR")]
        attributes: Vec<String>,
        #[command(flatten)]
        mgmt: MgmtArgs,
    },
    /// Create an entity: `tether create tcpListener name=web port=9090 address=web`.
    Create {
        /// Entity type, short or full.
        #[arg(value_name = "TYPE")]
        entity_type: String,
        /// Attributes as key=value (name= is required); integers become
        /// numbers, true/false booleans, quoted values strings.
        #[arg(value_name = "KEY=VALUE", required = true)]
        attributes: Vec<String>,
        #[command(flatten)]
        mgmt: MgmtArgs,
    },
    /// Delete an entity by name.
    Delete {
        /// Entity type, short or full.
        #[arg(value_name = "TYPE")]
        entity_type: String,
        /// The entity's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        mgmt: MgmtArgs,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// glibc's `rep movsb` memcpy is very slow on this class of CPU for some
/// buffer placements, and rustls copies every received record with it: on
/// the 2-core benchmark machine it took 24-30% of a receiving router's CPU.
/// Raising the threshold makes glibc use its vector copy instead (+30% bulk
/// throughput, see benches/README.md). The tunable is only read at process
/// start, so the router re-executes itself once with it set.
const MEMCPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=4194304";

fn reexec_with_memcpy_tunable() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("TETHER_NO_REEXEC").is_some() {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("x86_rep_movsb_threshold") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let tunables = if current.is_empty() {
        MEMCPY_TUNABLE.to_string()
    } else {
        format!("{current}:{MEMCPY_TUNABLE}")
    };
    // Only returns on failure, in which case we simply run as we are.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .env("TETHER_NO_REEXEC", "1")
        .exec();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cfg!(all(
        target_os = "linux",
        target_arch = "x86_64",
        target_env = "gnu"
    )) && matches!(
        cli.command,
        Command::Router {
            config: Some(_),
            ..
        }
    ) {
        reexec_with_memcpy_tunable();
    }
    match cli.command {
        Command::Router {
            check: Some(file), ..
        } => match tether_router::config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Router {
            config: Some(file), ..
        } => {
            let config = match tether_router::config::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            run_router(config)
        }
        Command::Router { .. } => {
            eprintln!("tether router: give --config FILE or --check FILE");
            ExitCode::from(2)
        }
        Command::Certs { out, names } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            match tether_router::tls::generate_site_certs(&out, &names) {
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tether certs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sim {
            routers,
            topology,
            degree,
            seed,
            fail_links,
            latency_ms,
        } => {
            let config = match tether_routing::sim::SimConfig::from_args(
                routers,
                &topology,
                degree,
                seed,
                fail_links.as_deref(),
                latency_ms,
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = tether_routing::sim::run(config);
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Demo {
            duration,
            base_port,
        } => {
            init_logging();
            match tether_router::demo::run(duration, base_port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tether demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { mgmt } => cli_mgmt::status(&mgmt),
        Command::Query {
            entity_type,
            attributes,
            mgmt,
        } => cli_mgmt::query(&mgmt, &entity_type, &attributes),
        Command::Create {
            entity_type,
            attributes,
            mgmt,
        } => cli_mgmt::create(&mgmt, &entity_type, &attributes),
        Command::Delete {
            entity_type,
            name,
            mgmt,
        } => cli_mgmt::delete(&mgmt, &entity_type, &name),
    }
}

fn run_router(config: tether_router::config::Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, tether_router::core::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
