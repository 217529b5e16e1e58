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
    /// Build the firmware: kernel + initramfs (the generic image) and a config disk per site.
    Build {
        network: PathBuf,
        /// Output directory: vmlinuz, initramfs.img, sites/<site>.cidata.img (+ disks).
        #[arg(long)]
        out: PathBuf,
        /// `cloud` (Debian's cloud kernel, for VMs) or `metal` (generic kernel + NIC drivers).
        #[arg(long, default_value = "cloud")]
        profile: String,
        /// What else to write, comma-separated: `raw-efi` (sitelink.raw, sites/<site>.raw:
        /// GPT, UEFI, systemd-boot, A/B slots), `qcow2`, `vhd` (Azure), `gce` (GCP tar.gz),
        /// `update` (sitelink-update.img: a running router installs it into its other slot).
        /// The kernel, initramfs and config disks (`kernel-initrd`) are always written.
        #[arg(long, default_value = "kernel-initrd")]
        format: String,
        /// Use this linux-image .deb instead of fetching one with apt-get download.
        #[arg(long, value_name = "PATH")]
        kernel_deb: Option<PathBuf>,
        /// Keystore directory (default OUT/keys, created with `keys init` semantics).
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
    },
    /// Work on a built disk: A/B updates with rollback, boot slots.
    Image {
        #[command(subcommand)]
        command: sitelink::build::ImageCommand,
    },
    /// Manage the sites' WireGuard keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the network on this machine: one router per site, LAN hosts, delays, NAT (root).
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Benchmarks (programs, not tests): print a table of this machine's figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The lab's internet switch (started by `lab up`).
    #[command(hide = true)]
    LabSwitch {
        #[arg(long)]
        ready: PathBuf,
        /// NAME:DELAY_MS per port.
        ports: Vec<String>,
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
enum LabCommand {
    /// Build the lab and start the routers; wait until every tunnel is up and every LAN reaches
    /// every other LAN, then print a table.
    Up {
        network: PathBuf,
        /// Where routers run: `vm` (QEMU VMs booted from the image; builds it if needed) or
        /// `netns` (router processes in network namespaces; fast, no image).
        #[arg(long, default_value = "vm")]
        mode: String,
        /// Return once the lab is up instead of staying in the foreground until Ctrl-C.
        #[arg(long)]
        detach: bool,
        /// Build only the topology, start no routers (for testing the lab itself).
        #[arg(long, hide = true)]
        no_routers: bool,
    },
    /// Remove everything the lab created (also after a crash); idempotent.
    Down { network: PathBuf },
    /// Show each site's namespaces and router processes.
    Status {
        network: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a site's LAN host.
    Exec {
        network: PathBuf,
        site: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Follow a router's log (a VM's serial console); --attach types on the VM's console.
    Console {
        network: PathBuf,
        site: String,
        /// Connect the terminal to the VM's serial console (the init's debug commands).
        #[arg(long)]
        attach: bool,
    },
    /// Reset a router VM (it boots again and rereads its config disk).
    Reboot { network: PathBuf, site: String },
    /// Stop a site's router service and have it start again.
    Restart {
        network: PathBuf,
        site: String,
        /// Stop it with SIGKILL (a crash) instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Drop WAN traffic between the routers of two sites.
    Cut {
        network: PathBuf,
        a: String,
        b: String,
    },
    /// Restore WAN traffic between the routers of two sites.
    Heal {
        network: PathBuf,
        a: String,
        b: String,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// iperf3 and ping through sitelink-wg, wireguard-go and boringtun-cli in network namespaces (root).
    Dataplane {
        /// sitelink-router binary to measure (default: next to this one).
        #[arg(long)]
        router: Option<PathBuf>,
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// The lab from nothing: up time, WAN vs tunnel vs LAN round trips, iperf3, a cut and heal;
    /// then down (root).
    Lab {
        network: PathBuf,
        #[arg(long, default_value = "vm")]
        mode: String,
        /// Seconds of iperf3.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
    /// Route installer: cold apply, second apply and withdraw of N routes in a scratch namespace (root).
    Routes {
        #[arg(long, default_value_t = 10_000)]
        routes: usize,
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
        Command::Build {
            network,
            out,
            profile,
            format,
            kernel_deb,
            keys,
        } => sitelink::build_image(
            &network,
            &out,
            &profile,
            &format,
            kernel_deb.as_deref(),
            keys.as_deref(),
        ),
        Command::Image { command } => sitelink::build::image(command).map_err(Into::into),
        Command::Keys {
            command:
                KeysCommand::Init {
                    network,
                    out,
                    rotate,
                },
        } => sitelink::keys_init(&network, &out, rotate.as_deref()),
        Command::Lab { command } => match command {
            LabCommand::Up {
                network,
                mode,
                detach,
                no_routers,
            } => sitelink::lab::up(&network, &mode, detach, no_routers),
            LabCommand::Down { network } => sitelink::lab::down(&network),
            LabCommand::Status { network, json } => sitelink::lab::status(&network, json),
            LabCommand::Exec {
                network,
                site,
                command,
            } => match sitelink::lab::exec(&network, &site, &command) {
                Ok(code) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => Err(e),
            },
            LabCommand::Restart {
                network,
                site,
                kill,
            } => sitelink::lab::restart(&network, &site, kill),
            LabCommand::Console {
                network,
                site,
                attach,
            } => sitelink::lab::console(&network, &site, attach),
            LabCommand::Reboot { network, site } => sitelink::lab::reboot(&network, &site),
            LabCommand::Cut { network, a, b } => sitelink::lab::cut(&network, &a, &b, false),
            LabCommand::Heal { network, a, b } => sitelink::lab::cut(&network, &a, &b, true),
        },
        Command::Bench {
            command: BenchCommand::Dataplane { router, seconds },
        } => sitelink::bench::dataplane(router.as_deref(), seconds).map_err(Into::into),
        Command::Bench {
            command:
                BenchCommand::Lab {
                    network,
                    mode,
                    seconds,
                },
        } => sitelink::lab::bench::run(&network, &mode, seconds),
        Command::Bench {
            command: BenchCommand::Routes { routes },
        } => sitelink::bench_routes(routes),
        Command::LabSwitch { ready, ports } => sitelink::lab::switch(&ready, &ports),
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
