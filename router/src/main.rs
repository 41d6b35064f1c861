//! The `tether` command line: run a router, check a config, generate
//! certificates, run the local multi-site demo, or manage a running router
//! over AMQP (`status`, `query`, `create`, `delete`; see
//! [`tether_router::cli_mgmt`]); and sites: `site`, `token`, `link`,
//! `connector`, `listener`, `expose`/`unexpose`, `network status` (see
//! [`tether_router::site`]), plus shell completion.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tether_router::cli_mgmt::{self, MgmtArgs};
use tether_router::site::cli::SiteCommand;
use tether_router::site::links::LinkCommand;
use tether_router::site::services::{
    self, ConnectorCommand, ListenerCommand, OutputArgs, WaitArgs,
};
use tether_router::site::tokens::TokenCommand;

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Tether: a Layer-7 service interconnect"
)]
struct Cli {
    /// The site folder to work on (site commands, and the default router of
    /// status/query/create/delete). Default: the only site under
    /// $XDG_DATA_HOME/tether/sites.
    #[arg(long, global = true, value_name = "DIR", env = tether_router::site::SITE_DIR_ENV)]
    site_dir: Option<PathBuf>,
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
    /// Sites: create, start (foreground), status, delete, install (systemd).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Tokens: issue one for another site to link here, or redeem one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Links without a grant server, and the state of this site's links.
    #[command(subcommand)]
    Link(LinkCommand),
    /// Services at this site that other sites reach (connectors).
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Ports at this site that reach services elsewhere (listeners).
    #[command(subcommand)]
    Listener(ListenerCommand),
    /// Make a service here reachable at every site of the network, on the
    /// same port where free (a connector other sites open listeners for).
    Expose {
        /// Name and routing key of the service.
        name: String,
        /// The service's port.
        port: u16,
        /// The service's host.
        #[arg(long, default_value = services::DEFAULT_CONNECTOR_HOST)]
        host: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop exposing a service: its connector here and the listeners
    /// other sites opened for it go away.
    Unexpose {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The whole network: sites, links, and where each routing key is
    /// exposed and consumed.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Print a shell completion script, e.g. `tether completion bash > ~/.local/share/bash-completion/completions/tether`.
    Completion { shell: clap_complete::Shell },
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

/// `tether network ...`.
#[derive(Subcommand)]
enum NetworkCommand {
    /// Every site reachable from this one, its links, and each routing key.
    Status {
        #[command(flatten)]
        output: OutputArgs,
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
        } | Command::Site(SiteCommand::Start)
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
        Command::Status { mut mgmt } => {
            if let Err(code) = default_to_site(&mut mgmt, cli.site_dir.as_deref()) {
                return code;
            }
            cli_mgmt::status(&mgmt)
        }
        Command::Query {
            entity_type,
            attributes,
            mut mgmt,
        } => {
            if let Err(code) = default_to_site(&mut mgmt, cli.site_dir.as_deref()) {
                return code;
            }
            cli_mgmt::query(&mgmt, &entity_type, &attributes)
        }
        Command::Create {
            entity_type,
            attributes,
            mut mgmt,
        } => {
            if let Err(code) = default_to_site(&mut mgmt, cli.site_dir.as_deref()) {
                return code;
            }
            cli_mgmt::create(&mgmt, &entity_type, &attributes)
        }
        Command::Delete {
            entity_type,
            name,
            mut mgmt,
        } => {
            if let Err(code) = default_to_site(&mut mgmt, cli.site_dir.as_deref()) {
                return code;
            }
            cli_mgmt::delete(&mgmt, &entity_type, &name)
        }
        Command::Site(SiteCommand::Start) => {
            init_logging();
            tether_router::site::cli::start(cli.site_dir.as_deref(), shutdown_signal())
        }
        Command::Site(cmd) => tether_router::site::cli::run_site(cmd, cli.site_dir.as_deref()),
        Command::Token(cmd) => block_on(tether_router::site::tokens::run(cmd, cli.site_dir)),
        Command::Link(cmd) => block_on(tether_router::site::links::run(cmd, cli.site_dir)),
        Command::Connector(cmd) => services::run_connector(cmd, cli.site_dir.as_deref()),
        Command::Listener(cmd) => services::run_listener(cmd, cli.site_dir.as_deref()),
        Command::Expose {
            name,
            port,
            host,
            wait,
        } => services::expose(cli.site_dir.as_deref(), &name, port, &host, &wait),
        Command::Unexpose { name, wait } => {
            services::unexpose(cli.site_dir.as_deref(), &name, &wait)
        }
        Command::Network(NetworkCommand::Status { output }) => {
            services::network_status(cli.site_dir.as_deref(), output.output)
        }
        Command::Completion { shell } => {
            // Into a buffer first: clap_complete panics on a write error,
            // and a closed pipe (`| head`) is not an error here.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tether", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
            ExitCode::SUCCESS
        }
    }
}

/// Management commands without `--router` go to the current site's router
/// when a site is found (`--site-dir`, `TETHER_SITE_DIR`, or the only site
/// under the default folder); otherwise to the default URL. A site folder
/// given explicitly that cannot be read is an error.
fn default_to_site(
    mgmt: &mut MgmtArgs,
    site_dir: Option<&std::path::Path>,
) -> Result<(), ExitCode> {
    if mgmt.router.is_some() {
        return Ok(());
    }
    let found = tether_router::site::SiteDir::resolve(site_dir).and_then(|site| site.load());
    match found {
        Ok(state) => mgmt.router = Some(state.amqp_url()),
        Err(e) if site_dir.is_some() => {
            eprintln!("error: {e}");
            return Err(ExitCode::FAILURE);
        }
        Err(_) => {}
    }
    Ok(())
}

/// Runs an async site command (token, link) on a single-threaded runtime.
fn block_on(f: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
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
