//! `sitelink`: the build host CLI. Parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build firmware for site-to-site VPN routers from one network description.
#[derive(Debug, Parser)]
#[command(name = "sitelink", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a network description; print a summary, or every error as FILE:LINE:COL.
    Validate { network: PathBuf },
    /// Print the router config of one site, as the router reads it.
    Render {
        network: PathBuf,
        /// Site to render.
        #[arg(long)]
        site: String,
        /// Keystore directory with <site>.pub files (default: public keys from the network file).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Manage the sites' WireGuard keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read wg-quick/wg config files into the router model (one interface per file).
    ImportWg {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write each interface's private key to DIR/<interface>.key (mode 0600).
        #[arg(long, value_name = "DIR")]
        keys_out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for every site that has none; keep existing keys.
    Init {
        network: PathBuf,
        /// Keystore directory (created with mode 0700).
        #[arg(long)]
        out: PathBuf,
        /// Replace this site's key.
        #[arg(long, value_name = "SITE")]
        rotate: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { network } => sitelink::validate(&network),
        Command::Render {
            network,
            site,
            keys,
        } => sitelink::render(&network, &site, keys.as_deref()),
        Command::Keys {
            command:
                KeysCommand::Init {
                    network,
                    out,
                    rotate,
                },
        } => sitelink::keys_init(&network, &out, rotate.as_deref()),
        Command::ImportWg { files, keys_out } => sitelink::import_wg(&files, keys_out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sitelink: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
