use std::process::ExitCode;

use clap::Parser;
use vaultbridge::cli::{Cli, init_logging, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    run(cli).await
}
