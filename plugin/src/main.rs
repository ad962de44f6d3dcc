use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vaultbridge::cli::{Cli, init_logging, run};

/// How long the exit waits for blocking tasks still running.
const EXIT_WAIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held until `run` returns: then the lines still queued are written.
    let _flush = init_logging(cli.log_format, &cli.command);
    // A panic is a bug: log where it happened, as one line in our log
    // format, but not its message, which may quote data we were handling.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(at = %at, "internal error: a panic (a bug; please report it with this location)");
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.worker_threads))
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => {
            let code = runtime.block_on(run(cli));
            // A blocking task still stuck (an audit write to a stdout
            // nobody reads) must not keep a stopped plugin alive.
            runtime.shutdown_timeout(EXIT_WAIT);
            code
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot start the runtime");
            ExitCode::FAILURE
        }
    }
}
