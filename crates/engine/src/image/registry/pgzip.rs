//! A gzip writer that compresses its input in blocks on several threads at once, as pigz
//! does: each block of [`BLOCK`] bytes is deflated on a thread of its own, primed with the
//! last 32 KiB of the input before it (so matches reach back across blocks as in a serial
//! stream and the ratio is the same), and ended with a sync flush so the blocks' outputs join
//! into one deflate stream. The CRC-32 of the whole input is combined from the blocks'. The
//! output is a plain single-member gzip file any gunzip reads, and the same for the same
//! input and level however many threads ran.
//!
//! A push spends most of its time compressing layers: on a machine with two cores this
//! halves that time (dockerd compresses on one core).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress};

/// Input bytes per block.
const BLOCK: usize = 1 << 20;
/// The deflate window: how much of the input before a block primes its compressor.
const WINDOW: usize = 32 << 10;
/// Blocks compressed at once, at most.
const MAX_WORKERS: usize = 8;

/// One block's deflate output and the CRC-32 of its input.
struct Compressed {
    deflate: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A gzip encoder compressing blocks of its input in parallel; [`ParallelGzEncoder::finish`]
/// writes the rest and the trailer.
pub struct ParallelGzEncoder<W: Write> {
    out: W,
    level: Compression,
    workers: usize,
    /// The block being filled.
    block: Vec<u8>,
    /// The last [`WINDOW`] bytes of the block before `block`.
    dictionary: Vec<u8>,
    /// Blocks being compressed, in input order.
    pending: VecDeque<JoinHandle<io::Result<Compressed>>>,
    crc: crc32fast::Hasher,
    /// Input bytes so far, modulo 2^32 as gzip's trailer has them.
    size: u32,
    header_written: bool,
}

impl<W: Write> ParallelGzEncoder<W> {
    /// An encoder writing to `out` at `level`, on as many threads as the machine has cores
    /// (at most [`MAX_WORKERS`]).
    pub fn new(out: W, level: Compression) -> ParallelGzEncoder<W> {
        let workers = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, MAX_WORKERS);
        ParallelGzEncoder::with_workers(out, level, workers)
    }

    fn with_workers(out: W, level: Compression, workers: usize) -> ParallelGzEncoder<W> {
        ParallelGzEncoder {
            out,
            level,
            workers: workers.max(1),
            block: Vec::with_capacity(BLOCK),
            dictionary: Vec::new(),
            pending: VecDeque::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
            header_written: false,
        }
    }

    /// Compresses what is left, writes the end of the deflate stream and gzip's trailer, and
    /// returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.dispatch()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.write_header()?;
        // An empty final block ends the stream the sync-flushed blocks left open.
        let mut last = Vec::with_capacity(64);
        Compress::new(self.level, false)
            .compress_vec(&[], &mut last, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        self.out.write_all(&last)?;
        self.out
            .write_all(&self.crc.clone().finalize().to_le_bytes())?;
        self.out.write_all(&self.size.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // No name, no mtime, OS "unknown": the same bytes for the same layer, always.
            self.out
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Hands the full (or last) block to a thread of its own.
    fn dispatch(&mut self) -> io::Result<()> {
        while self.pending.len() >= self.workers {
            self.write_oldest()?;
        }
        let input = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let tail = input.len().saturating_sub(WINDOW);
        let dictionary = std::mem::replace(&mut self.dictionary, input[tail..].to_vec());
        let level = self.level;
        let handle = std::thread::Builder::new()
            .name("gzip-block".to_string())
            .spawn(move || compress_block(level, &dictionary, &input))?;
        self.pending.push_back(handle);
        Ok(())
    }

    /// Waits for the oldest block and writes its output.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(handle) = self.pending.pop_front() else {
            return Ok(());
        };
        let compressed = handle
            .join()
            .map_err(|_| io::Error::other("a gzip block's compressor panicked"))??;
        self.write_header()?;
        self.out.write_all(&compressed.deflate)?;
        self.crc.combine(&compressed.crc);
        Ok(())
    }
}

/// Deflates `input` primed with `dictionary`, ending with a sync flush (byte-aligned, the
/// stream left open for the next block).
fn compress_block(level: Compression, dictionary: &[u8], input: &[u8]) -> io::Result<Compressed> {
    let mut compress = Compress::new(level, false);
    if !dictionary.is_empty() {
        compress
            .set_dictionary(dictionary)
            .map_err(io::Error::other)?;
    }
    let mut deflate = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        if deflate.capacity() - deflate.len() < 1024 {
            deflate.reserve(deflate.capacity().max(64 << 10));
        }
        let consumed = usize::try_from(compress.total_in()).map_err(io::Error::other)?;
        compress
            .compress_vec(&input[consumed..], &mut deflate, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        // The flush is complete once all input is in and the output was not filled up.
        let consumed = usize::try_from(compress.total_in()).map_err(io::Error::other)?;
        if consumed == input.len() && deflate.len() < deflate.capacity() {
            break;
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);
    Ok(Compressed { deflate, crc })
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        // Truncation intended: gzip's ISIZE is the length modulo 2^32.
        self.size = self.size.wrapping_add(n as u32);
        if self.block.len() == BLOCK {
            self.dispatch()?;
        }
        Ok(n)
    }

    /// Blocks are only compressed whole: a flush writes what is already compressed.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Text-like data that compresses, with repeats further apart than a block.
    fn sample(len: usize) -> Vec<u8> {
        let words: [&[u8]; 6] = [
            b"import ",
            b"def ",
            b"return self.",
            b"\n    ",
            b"os.path",
            b"# ",
        ];
        let mut out = Vec::with_capacity(len);
        let mut x: u32 = 12345;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            out.extend_from_slice(words[(x >> 16) as usize % words.len()]);
            out.extend_from_slice(format!("{}", (x >> 8) % 1000).as_bytes());
        }
        out.truncate(len);
        out
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("not a valid gzip stream: {e}"));
        out
    }

    fn gzip(input: &[u8], workers: usize, write_size: usize) -> Vec<u8> {
        let mut encoder =
            ParallelGzEncoder::with_workers(Vec::new(), Compression::default(), workers);
        for piece in input.chunks(write_size.max(1)) {
            encoder
                .write_all(piece)
                .unwrap_or_else(|e| panic!("write: {e}"));
        }
        encoder.finish().unwrap_or_else(|e| panic!("finish: {e}"))
    }

    #[test]
    fn blocks_compressed_in_parallel_make_one_gzip_stream_of_the_input() {
        for len in [0, 1, WINDOW, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 4321] {
            let input = sample(len);
            let gz = gzip(&input, 3, 70_000);
            assert_eq!(gunzip(&gz), input, "length {len}");
            // gzip's own tool agrees (CRC and size in the trailer).
            let mut check = std::process::Command::new("gzip")
                .args(["-t", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("gzip: {e}"));
            if let Some(mut stdin) = check.stdin.take() {
                stdin.write_all(&gz).unwrap_or_else(|e| panic!("{e}"));
            }
            assert!(check.wait().is_ok_and(|s| s.success()), "length {len}");
        }
    }

    #[test]
    fn the_output_does_not_depend_on_threads_or_write_sizes() {
        let input = sample(2 * BLOCK + 999);
        let one = gzip(&input, 1, BLOCK);
        assert_eq!(gzip(&input, 4, 4096), one);
        assert_eq!(gzip(&input, 2, 3 * BLOCK), one);
    }

    #[test]
    fn priming_with_the_previous_window_keeps_the_serial_ratio() {
        let input = sample(4 * BLOCK);
        let parallel = gzip(&input, 2, 1 << 16);
        let mut serial = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        serial.write_all(&input).unwrap_or_else(|e| panic!("{e}"));
        let serial = serial.finish().unwrap_or_else(|e| panic!("{e}"));
        // Within 1 % of one serial stream.
        assert!(
            parallel.len() * 100 <= serial.len() * 101,
            "{} vs {}",
            parallel.len(),
            serial.len()
        );
    }
}
