//! The fnrt control plane binary: reads configuration, starts tracing, runs the control plane.

use std::path::PathBuf;

use clap::Parser;

/// The fnrt control plane: Scaleway Functions v1beta1 API, gateway and scheduler.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Set one setting, as KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The cluster's certificates (README "Cluster TLS").
    #[command(subcommand)]
    Ca(Ca),
    /// Copies the redb store in state_dir into the etcd the settings name (store = "etcd"),
    /// with the control plane stopped.
    MigrateStore,
    /// Validates the configuration as a start would, then checks what the control plane
    /// needs, one line each. Exit 0: all passed; 1: a check failed; 2: bad configuration.
    CheckConfig,
}

#[derive(clap::Subcommand, Debug)]
enum Ca {
    /// Makes the cluster CA: <dir>/ca.pem and <dir>/ca.key (0600); never replaces one.
    Init {
        /// The CA's directory (made 0700 if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "fnrt cluster CA")]
        name: String,
    },
    /// Issues a certificate and key signed by the CA in <dir>: <out>.pem and <out>.key.
    Issue {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        /// node (an agent), controlplane, or client (of agents' TCP API).
        #[arg(long)]
        role: String,
        /// The holder's name: a node's node_name, the control plane's host name.
        #[arg(long)]
        name: String,
        /// A further IP address or DNS name it is reached at; repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Days it is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Files to write, <out>.pem and <out>.key (default <dir>/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn ca(cmd: Ca) -> std::process::ExitCode {
    let made = match cmd {
        Ca::Init { dir, name } => fnrt_controlplane::ca::init(&dir, &name),
        Ca::Issue { dir, role, name, sans, days, out } => {
            fnrt_common::pki::Role::parse(&role).and_then(|role| {
                fnrt_controlplane::ca::issue(&fnrt_controlplane::ca::IssueArgs {
                    dir,
                    role,
                    name,
                    sans,
                    days,
                    out,
                })
            })
        }
    };
    match made {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", fnrt_common::chain(&e));
            std::process::ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Command::Ca(cmd)) = args.command {
        return ca(cmd);
    }
    // Clients name their crypto provider; this covers any TLS set-up that does not.
    fnrt_common::tls::install_default_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FNRT_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut cfg = match fnrt_controlplane::Config::load(args.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for kv in &args.set {
        let result = kv
            .split_once('=')
            .ok_or_else(|| "expected KEY=VALUE".to_string())
            .and_then(|(k, v)| cfg.set(k, v));
        if let Err(e) = result {
            eprintln!("error: --set {kv:?}: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    if let Some(Command::CheckConfig) = args.command {
        if let Err(e) = cfg.validate() {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
        let report = fnrt_controlplane::check::run(&cfg, args.config.as_deref()).await;
        print!("{report}");
        return if report.passed() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    if let Some(Command::MigrateStore) = args.command {
        return match fnrt_controlplane::store::migrate::redb_to_etcd(&cfg).await {
            Ok(n) => {
                println!("copied {n} records into etcd under {}", cfg.etcd_prefix);
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", fnrt_common::chain(&e));
                std::process::ExitCode::from(2)
            }
        };
    }
    match fnrt_controlplane::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
