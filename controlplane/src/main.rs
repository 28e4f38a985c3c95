//! The fnrt control plane binary: reads configuration, starts tracing, runs the control plane.

use std::path::PathBuf;

use clap::Parser;

/// The fnrt control plane: Scaleway Functions v1beta1 API, gateway and scheduler.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Set one setting, as KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
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
    match fnrt_controlplane::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
