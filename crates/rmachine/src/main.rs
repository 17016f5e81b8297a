//! `rmachine`: docker-machine's command line for rmachine machines.
//!
//! This binary parses arguments and formats output; every decision is made by `rmachine-host`.

mod cmd;
mod output;
mod progress;
mod table;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use rmachine_driver::protocol::{Flag, FlagKind, Options};
use rmachine_host::drivers::{DriverChoice, DriverKind};
use rmachine_host::external::ExternalDriver;

/// Create and manage machines running Docker.
#[derive(Parser, Debug)]
#[command(
    name = "rmachine",
    version,
    about = "Create and manage machines running Docker."
)]
struct Cli {
    /// Where machines, certificates and guest images are stored.
    #[arg(short = 's', long, env = "RMACHINE_STORAGE_PATH", global = true)]
    storage_path: Option<PathBuf>,

    /// Debug logging (same as -vv).
    #[arg(short = 'D', long, env = "RMACHINE_DEBUG", global = true)]
    debug: bool,

    /// Use rmachine's own SSH client (russh) instead of the system's `ssh` for `rmachine ssh`.
    #[arg(long = "native-ssh", env = "MACHINE_NATIVE_SSH", global = true)]
    native_ssh: bool,

    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: cmd::Command,
}

fn init_tracing(debug: bool, verbose: u8, agent: bool) {
    let level = match (debug, verbose) {
        (_, 3..) => "trace",
        (true, _) | (_, 2) => "debug",
        (_, 1) => "info",
        // The port agent's log (its stderr) records every port it opens and closes.
        _ if agent => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RMACHINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes the completion script for `shell` to stdout.
fn print_completion(shell: cmd::CompletionShell) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        cmd::CompletionShell::Bash => Shell::Bash,
        cmd::CompletionShell::Zsh => Shell::Zsh,
        cmd::CompletionShell::Fish => Shell::Fish,
        cmd::CompletionShell::Powershell => Shell::PowerShell,
    };
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "rmachine", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// The driver `create` is asked for on this command line (`-d`, `--driver`, or
/// `RMACHINE_DRIVER`), found before clap parses, since the driver decides which flags exist.
fn create_driver(argv: &[OsString]) -> Option<String> {
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy());
    // The first word that is neither a global flag nor its value is the subcommand.
    loop {
        let arg = args.next()?;
        match arg.as_ref() {
            "-s" | "--storage-path" => {
                args.next();
            }
            "create" => break,
            a if a.starts_with('-') => {}
            _ => return None,
        }
    }
    let mut driver = None;
    while let Some(arg) = args.next() {
        match arg.as_ref() {
            "--" => break,
            "-d" | "--driver" => driver = args.next().map(|v| v.into_owned()),
            a => {
                if let Some(v) = a.strip_prefix("--driver=") {
                    driver = Some(v.to_string());
                } else if let Some(v) = a.strip_prefix("-d").filter(|v| !v.is_empty()) {
                    driver = Some(v.trim_start_matches('=').to_string());
                }
            }
        }
    }
    driver.or_else(|| std::env::var("RMACHINE_DRIVER").ok())
}

/// `create` for `driver`: other built-in drivers' flags hidden and deaf to their environment
/// variables (docker-machine ignores another driver's variables: a stray `QEMU_ACCEL` must
/// not block `-d virtualbox`), an external driver's flags added.
fn create_for_driver(
    create: clap::Command,
    driver: &str,
    plugin_flags: Option<&[Flag]>,
) -> clap::Command {
    let others = other_driver_prefixes(driver);
    let hidden: Vec<clap::Id> = create
        .get_arguments()
        .filter(|a| {
            a.get_long()
                .is_some_and(|l| others.iter().any(|p| l.starts_with(p.as_str())))
        })
        .map(|a| a.get_id().clone())
        .collect();
    let mut create = create;
    for id in hidden {
        create = create.mut_arg(id, |a| a.hide(true).env(clap::builder::Resettable::Reset));
    }
    for flag in plugin_flags.unwrap_or_default() {
        let mut help = flag.help.clone();
        if let Some(default) = &flag.default {
            help.push_str(&format!(" [default: {default}]"));
        }
        let arg = clap::Arg::new(flag.name.clone())
            .long(flag.name.clone())
            .help(help);
        create = create.arg(match flag.kind {
            FlagKind::String => arg.action(clap::ArgAction::Set).value_name("VALUE"),
            FlagKind::Bool => arg.action(clap::ArgAction::SetTrue),
        });
    }
    create
}

/// `NAME-` of every built-in driver other than `driver`.
fn other_driver_prefixes(driver: &str) -> Vec<String> {
    <DriverKind as clap::ValueEnum>::value_variants()
        .iter()
        .map(|k| k.name())
        .filter(|name| *name != driver)
        .map(|name| format!("{name}-"))
        .collect()
}

/// The first plugin flag whose name is already one of `create`'s or a global flag (a plugin
/// named `engine` could declare `--engine-env`): it would shadow rmachine's own.
fn shadowing_flag(flags: &[Flag]) -> Option<&Flag> {
    let cli = Cli::command();
    let mut taken: Vec<String> = vec!["help".into(), "version".into()];
    let create_args = cli
        .find_subcommand("create")
        .into_iter()
        .flat_map(|c| c.get_arguments());
    taken.extend(
        cli.get_arguments()
            .chain(create_args)
            .filter_map(|a| a.get_long().map(str::to_owned)),
    );
    flags.iter().find(|f| taken.contains(&f.name))
}

/// A command line that does not parse, reported as docker-machine reports it.
struct UsageError {
    /// What goes to stdout first (docker-machine's `Incorrect Usage.` and the command's help).
    stdout: String,
    /// The one line on stderr.
    stderr: String,
}

/// The subcommand named on `argv` (the first word that is neither a global flag nor its
/// value), if it is one of `command`'s.
fn invoked_subcommand<'a>(command: &'a clap::Command, argv: &[OsString]) -> Option<&'a str> {
    let mut args = argv.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        match arg.as_ref() {
            "-s" | "--storage-path" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            word => return command.find_subcommand(word).map(|c| c.get_name()),
        }
    }
    None
}

/// docker-machine's report of a command line that does not parse. Its CLI library (urfave/cli
/// v1, vendored as codegangsta/cli) prints `Incorrect Usage.`, a blank line and the command's
/// help on stdout, then docker-machine logs Go's `flag` error on stderr (`flag provided but
/// not defined: -bogus`, `flag needs an argument: -driver`); a missing machine name is the
/// command's own error after its help (`Error: No machine name specified` for `create`,
/// `Error: Expected to get one or more machine names as arguments` for `rm`). Other usage
/// errors keep clap's first line. docker-machine then exits 0 for flag errors (its `main`
/// only logs `app.Run`'s error); rmachine exits 1, as for every other bad input, so scripts
/// see the failure.
fn usage_error(err: &clap::Error, command: &mut clap::Command, argv: &[OsString]) -> UsageError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // Built, the subcommands' usage lines carry the binary's name (`rmachine ls`).
    command.build();
    let sub = invoked_subcommand(command, argv).map(str::to_owned);
    let help = match sub.as_deref().and_then(|s| command.find_subcommand_mut(s)) {
        Some(sub) => sub.render_help().to_string(),
        None => command.render_help().to_string(),
    };
    let arg = || match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // Go's flag package names a flag with one dash, without its value placeholder.
    let go_flag = |arg: String| {
        let name = arg.split([' ', '=']).next().unwrap_or_default();
        format!("-{}", name.trim_start_matches('-'))
    };
    let clap_line = || {
        err.render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let incorrect = format!("Incorrect Usage.\n\n{help}");
    match err.kind() {
        ErrorKind::UnknownArgument if arg().is_some_and(|a| a.starts_with('-')) => UsageError {
            stdout: incorrect,
            stderr: format!(
                "flag provided but not defined: {}",
                go_flag(arg().unwrap_or_default())
            ),
        },
        ErrorKind::InvalidValue
            if matches!(err.get(ContextKind::InvalidValue), Some(ContextValue::String(v)) if v.is_empty())
                && arg().is_some_and(|a| a.starts_with('-')) =>
        {
            UsageError {
                stdout: incorrect,
                stderr: format!(
                    "flag needs an argument: {}",
                    go_flag(arg().unwrap_or_default())
                ),
            }
        }
        ErrorKind::MissingRequiredArgument if sub.as_deref() == Some("create") => UsageError {
            stdout: help,
            stderr: "Error: No machine name specified".to_string(),
        },
        ErrorKind::MissingRequiredArgument if sub.as_deref() == Some("rm") => UsageError {
            stdout: help,
            stderr: "Error: Expected to get one or more machine names as arguments".to_string(),
        },
        _ => UsageError {
            stdout: incorrect,
            stderr: clap_line(),
        },
    }
}

/// Parses the command line, with `create`'s flags those of the driver it names.
fn parse_cli() -> Result<Cli, String> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let driver = create_driver(&argv).unwrap_or_else(|| DriverKind::default().name().to_string());
    let plugin_flags = match DriverChoice::from_name(&driver) {
        Ok(DriverChoice::External { name, program }) => {
            let flags =
                ExternalDriver::flags(&name, &program).map_err(|e| format!("Error: {e}"))?;
            if let Some(flag) = shadowing_flag(&flags) {
                return Err(format!(
                    "Error: driver {name}: {} declares the flag --{}, which is already a flag of rmachine create; the plugin must rename it",
                    program.display(),
                    flag.name
                ));
            }
            Some(flags)
        }
        _ => None,
    };
    let mut command = Cli::command().mut_subcommand("create", |c| {
        create_for_driver(c, &driver, plugin_flags.as_deref())
    });
    let others = other_driver_prefixes(&driver);
    // Other drivers' flags stay parseable (clap needs them for the derived struct) but are
    // refused when given, never silently dropped. Only built-in flags are looked at: a plugin
    // named like a built-in's prefix (`qemu-remote`) has flags of its own (`--qemu-remote-…`).
    let foreign: Vec<(clap::Id, String)> = Cli::command()
        .find_subcommand("create")
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| {
                    let long = a.get_long()?;
                    others
                        .iter()
                        .any(|p| long.starts_with(p.as_str()))
                        .then(|| (a.get_id().clone(), long.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    let matches = match command.try_get_matches_from_mut(&argv) {
        Ok(matches) => matches,
        // An unknown command gets docker-machine's message and exit status (`cmdNotFound` in
        // docker/machine's cmd/docker-machine/machine.go); other usage errors keep clap's.
        Err(err) if err.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            let invoked = argv
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_else(|| "rmachine".into());
            let command = err
                .get(clap::error::ContextKind::InvalidSubcommand)
                .map(|v| v.to_string())
                .unwrap_or_default();
            return Err(format!(
                "rmachine: '{command}' is not a rmachine command. See '{invoked} --help'."
            ));
        }
        Err(err) if !err.use_stderr() => err.exit(),
        // No command: docker-machine shows the help on stdout and exits 0.
        Err(err)
            if matches!(
                err.kind(),
                clap::error::ErrorKind::MissingSubcommand
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) && invoked_subcommand(&command, &argv).is_none() =>
        {
            print!("{}", command.render_help());
            std::process::exit(0);
        }
        Err(err) => {
            let usage = usage_error(&err, &mut command, &argv);
            print!("{}", usage.stdout);
            return Err(usage.stderr);
        }
    };
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(create) = matches.subcommand_matches("create") {
        for (id, long) in &foreign {
            if create.value_source(id.as_str()) == Some(ValueSource::CommandLine) {
                let owner = long.split('-').next().unwrap_or_default();
                return Err(format!(
                    "Error: --{long} is a flag of the {owner} driver, not of {driver}"
                ));
            }
        }
        let generic = matches!(DriverKind::from_name(&driver), Ok(DriverKind::Generic));
        if let (true, cmd::Command::Create(args)) = (generic, &mut cli.command) {
            let from_env = |id: &str| create.value_source(id) == Some(ValueSource::EnvVariable);
            args.ignore_guest_image_env(from_env("guest_image"), from_env("guest_image_url"));
        }
        if let (Some(flags), cmd::Command::Create(args)) = (&plugin_flags, &mut cli.command) {
            let mut options = Options::new();
            for flag in flags {
                if create.value_source(&flag.name) != Some(ValueSource::CommandLine) {
                    continue;
                }
                let value = match flag.kind {
                    FlagKind::Bool => serde_json::Value::Bool(true),
                    FlagKind::String => match create.get_one::<String>(&flag.name) {
                        Some(v) => serde_json::Value::String(v.clone()),
                        None => continue,
                    },
                };
                options.insert(flag.name.clone(), value);
            }
            args.set_plugin_options(options);
        }
    }
    Ok(cli)
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(1);
        }
    };
    if let cmd::Command::Completion(args) = &cli.command {
        return print_completion(args.shell);
    }
    let agent = matches!(cli.command, cmd::Command::PortAgent(_));
    init_tracing(cli.debug, cli.verbose, agent);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cmd::run(cli.storage_path, cli.native_ssh, cli.command));
    // Do not wait for blocked stdin readers (ssh) to notice the end.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // docker-machine prints the message alone (scripts match on it); the messages
            // that start with "Error" carry it in their own text, as docker-machine's do.
            // Not eprintln!: after SIGHUP the terminal is gone and a failed write must not
            // turn the exit code into a panic's.
            let _ = writeln!(std::io::stderr(), "{err:#}");
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
