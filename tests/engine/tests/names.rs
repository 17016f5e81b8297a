//! Generated container names: Docker's adjective_surname form.

use rmachine_tests_engine::Engine;

#[test]
fn generated_names_are_adjective_underscore_surname() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        engine.docker(&["create", "busybox", "true"])?.ok()?;
    }
    let ps = engine
        .docker(&["ps", "-a", "--format", "{{.Names}}"])?
        .ok()?;
    for name in ps.stdout.lines() {
        let (adjective, surname) = name
            .split_once('_')
            .ok_or_else(|| anyhow::anyhow!("not adjective_surname: {name}"))?;
        assert!(!adjective.is_empty() && adjective.chars().all(|c| c.is_ascii_lowercase()));
        assert!(surname
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .chars()
            .all(|c| c.is_ascii_lowercase()));
        assert_ne!(name, "boring_wozniak");
        assert!(seen.insert(name.to_string()), "duplicate name {name}");
    }
    assert_eq!(seen.len(), 8);
    Ok(())
}
