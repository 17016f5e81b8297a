//! `rmachine upgrade`.

use std::time::Duration;

use rmachine_host::image::{self, ImageSource};
use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;
use crate::progress::Renderer;

/// Upgrade a machine to the current guest image (its data disk is kept)
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Guest image: a directory or the http(s) URL of one (default: a new development build,
    /// else the cached or downloaded release image)
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

    /// Seconds to wait for the engine after the VM boots
    #[arg(long = "engine-timeout", default_value_t = machine::DEFAULT_ENGINE_TIMEOUT.as_secs())]
    engine_timeout: u64,

    /// Print plain step lines instead of a spinner
    #[arg(long = "no-progress")]
    no_progress: bool,

    /// Machine names (default: "default")
    names: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    let timeout = Duration::from_secs(args.engine_timeout);
    let plain = args.no_progress;
    let image = args.guest_image.as_ref();
    let image_url = args.guest_image_url.as_str();
    let names = &names[..];
    super::for_each(names, |name| async move {
        let renderer = Renderer::for_machine(plain, &name, names);
        let version = machine::upgrade(store, &name, image, image_url, timeout, &|p| {
            renderer.step(p)
        })
        .await?;
        renderer.finish();
        super::start_port_agent_if_running(store, &name).await?;
        outln(&format!("Machine \"{name}\" runs guest image {version}."))
    })
    .await
}
