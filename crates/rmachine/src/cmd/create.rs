//! `rmachine create`.

use std::time::{Duration, Instant};

use anyhow::Context;
use rmachine_host::drivers::{DriverChoice, DriverOptions};
use rmachine_host::image::{self, ImageSource};
use rmachine_host::machine::{self, CreateOptions, MachineError};
use rmachine_host::store::{Store, StoreError};

use crate::output::outln;
use crate::progress::Renderer;

/// Create a machine.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Driver to create the machine with
    #[arg(short = 'd', long, env = "RMACHINE_DRIVER", default_value = "qemu")]
    driver: String,

    /// Number of virtual CPUs
    #[arg(long, default_value_t = 1)]
    cpus: u32,

    /// Memory in MB
    #[arg(long, default_value_t = 1024)]
    memory: u64,

    /// Data disk size in MB
    #[arg(long = "disk-size", default_value_t = 20000)]
    disk_size: u64,

    /// Guest image: a directory (manifest.json, kernel, initrd) or the http(s) URL of one
    #[arg(
        long = "guest-image",
        env = "RMACHINE_GUEST_IMAGE",
        value_name = "PATH|URL"
    )]
    guest_image: Option<ImageSource>,

    /// Where release guest images are downloaded from when no local one is found ({version}
    /// and {arch} are filled in)
    #[arg(long = "guest-image-url", env = "RMACHINE_GUEST_IMAGE_URL", value_name = "URL",
          default_value = image::DEFAULT_DOWNLOAD_URL)]
    guest_image_url: String,

    /// Label for the engine, KEY=VALUE (repeatable)
    #[arg(long = "engine-label")]
    engine_label: Vec<String>,

    /// Registry the engine may reach over plain HTTP (repeatable)
    #[arg(long = "engine-insecure-registry")]
    engine_insecure_registry: Vec<String>,

    /// Registry mirror for the engine (repeatable)
    #[arg(long = "engine-registry-mirror")]
    engine_registry_mirror: Vec<String>,

    /// Environment variable for the engine, KEY=VALUE (repeatable)
    #[arg(long = "engine-env")]
    engine_env: Vec<String>,

    /// Extra subject alternative name for the engine's certificate (repeatable)
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,

    /// Host folder to share into the machine, HOST[:GUEST][:ro] (repeatable; default: your
    /// home folder at the same path)
    #[arg(long = "share", value_name = "HOST[:GUEST][:ro]")]
    share: Vec<String>,

    /// Share no host folder, not even your home folder
    #[arg(long = "no-share", conflicts_with = "share")]
    no_share: bool,

    /// Seconds to wait for the engine after the VM boots
    #[arg(long = "engine-timeout", default_value_t = machine::DEFAULT_ENGINE_TIMEOUT.as_secs())]
    engine_timeout: u64,

    /// Print plain step lines instead of a spinner
    #[arg(long = "no-progress")]
    no_progress: bool,

    /// Print when each boot stage was reached (guest and host), once the machine is ready
    #[arg(long = "timings")]
    timings: bool,

    /// Host address on which containers' published ports appear (default: 127.0.0.1 and ::1)
    #[arg(long = "published-bind-address", value_name = "ADDR")]
    published_bind_address: Option<std::net::IpAddr>,

    /// `stop` saves the running machine's state and `start` resumes it (as `stop --save`;
    /// `stop --no-save` powers it off); needs --no-share
    #[arg(long = "save-on-stop")]
    save_on_stop: bool,

    #[command(flatten)]
    driver_options: DriverOptions,

    /// Machine name
    name: String,
}

impl Args {
    /// The values of an external driver's flags, read by `main` from the command line it
    /// extended with them.
    pub fn set_plugin_options(&mut self, options: rmachine_driver::protocol::Options) {
        self.driver_options.plugin = options;
    }

    /// Forgets the guest image settings that came from `RMACHINE_GUEST_IMAGE` /
    /// `RMACHINE_GUEST_IMAGE_URL` (`image`, `url`): settings for the machines that boot one,
    /// ignored by a driver that boots none (typed flags are still refused by the host).
    pub fn ignore_guest_image_env(&mut self, image: bool, url: bool) {
        if image {
            self.guest_image = None;
        }
        if url {
            self.guest_image_url = image::DEFAULT_DOWNLOAD_URL.to_string();
        }
    }
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let driver = DriverChoice::from_name(&args.driver)?;
    let options = CreateOptions {
        driver,
        driver_options: args.driver_options,
        cpus: args.cpus,
        memory_mb: args.memory,
        disk_size_mb: args.disk_size,
        guest_image: args.guest_image,
        guest_image_url: args.guest_image_url,
        engine_labels: args.engine_label,
        engine_insecure_registries: args.engine_insecure_registry,
        engine_registry_mirrors: args.engine_registry_mirror,
        engine_env: args.engine_env,
        tls_san: args.tls_san,
        engine_timeout: Duration::from_secs(args.engine_timeout),
        published_bind_address: args.published_bind_address,
        shares: args.share,
        no_share: args.no_share,
        save_on_stop: args.save_on_stop,
    };
    let renderer = Renderer::new(args.no_progress);
    let started = Instant::now();
    let result = machine::create(store, &args.name, &options, &|p| renderer.step(p)).await;
    renderer.finish();
    match result {
        Ok(config) => {
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "machine created");
            super::start_port_agent(store, &args.name).await?;
            if args.timings {
                super::print_timings(&config)?;
            }
            outln(&format!(
                "To see how to connect your Docker Client to the Docker Engine running on this virtual machine, run: rmachine env {}",
                args.name
            ))?;
            Ok(0)
        }
        // docker-machine prints these two without the "Error creating machine" prefix.
        Err(
            e @ (MachineError::Precheck { .. }
            | MachineError::Store(StoreError::AlreadyExists { .. })),
        ) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e)).context("Error creating machine"),
    }
}
