//! The `pushrun` command: dispatch, and the exit status. The work is in
//! the library: [`pushrun::cmd`] for the subcommands, [`pushrun::run`] for
//! a run.

use std::process::ExitCode;

use clap::Parser;

use pushrun::cmd::{self, Cli, Command};

fn main() -> ExitCode {
    // Started by ssh as its askpass program: answer and go.
    if let Some(code) = pushrun::auth::askpass_main() {
        return ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Exec(args) => cmd::exec::run(&args),
        Command::Hosts(args) => cmd::hosts::run(&args),
        Command::Clean(args) => cmd::clean::run(&args),
        Command::Copy(args) => cmd::copy::run(&args),
        Command::Fetch(args) => cmd::fetch::run(&args),
        Command::Completions { shell } => cmd::completions::completions(shell),
        Command::Man => cmd::completions::man(),
        Command::Disconnect(args) => cmd::disconnect::run(&args),
        Command::Relay => cmd::relay::run(),
    };
    match done {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("pushrun: {}", e.with_causes());
            e.exit().into()
        }
    }
}
