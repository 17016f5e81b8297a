//! `--dns`, `--dns-search` and `--dns-option` in the container's `/etc/resolv.conf`.

use rmachine_tests_engine::Engine;

#[test]
fn dns_options_are_written_into_resolv_conf() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--dns",
            "192.0.2.53",
            "--dns",
            "192.0.2.54",
            "--dns-search",
            "example.org",
            "--dns-option",
            "ndots:2",
            "busybox",
            "cat",
            "/etc/resolv.conf",
        ])?
        .ok()?;
    assert_eq!(
        run.stdout,
        "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch example.org\noptions ndots:2\n"
    );
    // Only the name servers replaced: the host's search and options stay.
    let host = std::fs::read_to_string("/etc/resolv.conf")?;
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--dns",
            "192.0.2.53",
            "busybox",
            "cat",
            "/etc/resolv.conf",
        ])?
        .ok()?;
    assert!(run.stdout.starts_with("nameserver 192.0.2.53\n"), "{run:?}");
    assert_eq!(run.stdout.matches("nameserver").count(), 1, "{run:?}");
    for line in host.lines().filter(|l| l.starts_with("search ")) {
        assert!(run.stdout.contains(line), "{line} in {run:?}");
    }
    Ok(())
}
