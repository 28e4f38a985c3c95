//! agentctl: parses the command line and runs it; exit codes are documented in the library.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = agentctl::Cli::parse();
    // Clients name their crypto provider; this covers any TLS set-up that does not.
    fnrt_common::tls::install_default_provider();
    match agentctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
