//! `rmachine-runtime`: runs one container (see the `rmachine_runtime` library docs).

fn main() {
    std::process::exit(rmachine_runtime::main_entry(std::env::args_os().collect()));
}
