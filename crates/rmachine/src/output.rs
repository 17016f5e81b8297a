//! Writing to stdout without panicking on a closed pipe (`rmachine ls | head`).

use std::io::Write;

/// Writes `text` to stdout and flushes; a closed pipe surfaces as a BrokenPipe error, which
/// `main` treats as success.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// [`out`] with a newline.
pub fn outln(text: &str) -> anyhow::Result<()> {
    out(&format!("{text}\n"))
}
