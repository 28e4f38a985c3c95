//! The fnrt agent binary: reads configuration, starts tracing, runs the agent.

use std::path::PathBuf;

use clap::Parser;

/// The fnrt node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (keys as in the Config of the agent library).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Set one setting, as KEY=VALUE (e.g. --set containerd_socket=/run/x.sock); repeatable.
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
    /// Loads the configuration as a start would, then checks what the agent needs of the
    /// node, one line each. Exit 0: all passed; 1: a check failed; 2: bad configuration.
    CheckConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Clients name their crypto provider; this covers any TLS set-up that does not.
    fnrt_common::tls::install_default_provider();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FNRT_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let cfg = match load(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = args.command {
        let report = fnrt_agent::check::run(&cfg, args.config.as_deref()).await;
        print!("{report}");
        return if report.passed() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    match fnrt_agent::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", fnrt_agent::chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> Result<fnrt_agent::Config, fnrt_agent::ConfigError> {
    let mut cfg = fnrt_agent::Config::load(args.config.as_deref(), std::env::vars())?;
    let mut errors = Vec::new();
    for kv in &args.set {
        match kv.split_once('=') {
            Some((k, v)) => {
                if let Err(e) = cfg.set(k, v) {
                    errors.push(format!("--set {k}: {e}"));
                }
            }
            None => errors.push(format!("--set {kv:?}: expected KEY=VALUE")),
        }
    }
    if !errors.is_empty() {
        return Err(fnrt_agent::ConfigError(errors));
    }
    cfg.validate()?;
    Ok(cfg)
}
