//! The `dynakv` binary: see `dynakv --help` and [`cli`].

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                // --help and --version: print as clap renders them, exit 0.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line: clap's first line names the problem; the usage follows in --help.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter(&cli))),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A node runs its network tasks on one thread, beside the core's own thread: requests then
    // move between two threads only, instead of between the core and a pool of workers (each
    // hop between pool threads is a futex wake; with several nodes per machine the pool threads
    // mostly fight each other). Commands that are clients keep the multi-threaded runtime.
    let mut builder = match cli.command {
        cli::Command::Node(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain into one line.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Servers log at info; one-shot commands only warn, so their stderr stays one clear line.
fn default_filter(cli: &cli::Cli) -> &'static str {
    match cli.command {
        cli::Command::Node(_) | cli::Command::Dev(_) => "info",
        _ => "warn",
    }
}
