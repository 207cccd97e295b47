//! Reading one rules file from disk with bounds: regular files only, a size
//! cap, and text decoding (UTF-8, or UTF-16 with a byte-order mark, as
//! yaml-cpp accepts) whose errors say where.
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest rules file read or loaded. A file with a million-item IOC
/// list is around 20 MiB.
pub const MAX_SOURCE_BYTES: usize = 64 << 20;
/// What one load may read in all, across files.
pub const MAX_TOTAL_BYTES: usize = 256 << 20;

/// Why a rules file could not be read as text.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a regular file ({kind}); rules files must be regular files", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: larger than {} MiB", path.display(), MAX_SOURCE_BYTES >> 20)]
    TooLarge { path: PathBuf },
    #[error("{}:{line}:{column}: {what}", path.display())]
    Encoding {
        path: PathBuf,
        line: usize,
        column: usize,
        what: &'static str,
    },
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads and decodes one rules file. Refuses anything but a regular file
/// before opening it, so a FIFO never blocks and `/dev/zero` is never read.
pub fn read_source(path: &Path) -> Result<String, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    // Re-checked on the opened file: the path may have been swapped.
    let opened = file.metadata().map_err(io)?;
    if !opened.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&opened),
        });
    }
    // Sized from the file: grown by doubling, a 20 MiB file took a 32 MiB
    // buffer.
    let expected = usize::try_from(opened.len())
        .unwrap_or(0)
        .min(MAX_SOURCE_BYTES);
    let mut bytes = Vec::with_capacity(expected.saturating_add(1));
    file.take(MAX_SOURCE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    // The common case without a copy: at 20 MiB the copy doubled the read.
    let bytes = match String::from_utf8(bytes) {
        Ok(text) if !text.starts_with('\u{feff}') => return Ok(text),
        Ok(text) => text.into_bytes(),
        Err(e) => e.into_bytes(),
    };
    decode(&bytes).map_err(|(line, column, what)| ReadError::Encoding {
        path: path.to_path_buf(),
        line,
        column,
        what,
    })
}

/// 1-based line and column (in characters) of byte `offset` in valid text.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

type DecodeError = (usize, usize, &'static str);

/// UTF-8 (an optional BOM dropped), or UTF-16 LE/BE after its BOM.
pub(crate) fn decode(bytes: &[u8]) -> Result<String, DecodeError> {
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return utf8(rest);
    }
    let utf16 = |rest: &[u8], word: fn([u8; 2]) -> u16| -> Result<String, DecodeError> {
        if !rest.len().is_multiple_of(2) {
            let partial = decode_utf16(&rest[..rest.len() - 1], word).unwrap_or_default();
            let (line, column) = position(&partial, partial.len());
            return Err((
                line,
                column,
                "UTF-16 text ends in the middle of a character",
            ));
        }
        decode_utf16(rest, word)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xff, 0xfe]) {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xfe, 0xff]) {
        return utf16(rest, u16::from_be_bytes);
    }
    utf8(bytes)
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            let (line, column) = position(good, good.len());
            Err((
                line,
                column,
                "invalid UTF-8 (rules files are UTF-8, or UTF-16 with a byte-order mark)",
            ))
        }
    }
}

fn decode_utf16(bytes: &[u8], word: fn([u8; 2]) -> u16) -> Result<String, DecodeError> {
    let units = bytes.chunks_exact(2).map(|c| word([c[0], c[1]]));
    let mut out = String::with_capacity(bytes.len() / 2);
    for unit in char::decode_utf16(units) {
        match unit {
            Ok(c) => out.push(c),
            Err(_) => {
                let (line, column) = position(&out, out.len());
                return Err((line, column, "invalid UTF-16 (an unpaired surrogate)"));
            }
        }
    }
    Ok(out)
}

/// Where the first NUL byte is: libyaml refuses it without a useful position.
pub(crate) fn find_nul(text: &str) -> Option<(usize, usize)> {
    text.find('\0').map(|i| position(text, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_utf8_and_utf16_with_positions() {
        assert_eq!(decode(b"\xef\xbb\xbf- a\n").unwrap(), "- a\n");
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain("- é\n".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "- é\n");
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain("- b\n".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "- b\n");
        assert_eq!(decode(b"- a\n- b\xff\n").unwrap_err().0, 2);
        assert_eq!(decode(b"- a\n- b\xff\n").unwrap_err().1, 4);
        assert_eq!(find_nul("- a\n  b: c\0\n"), Some((2, 7)));
        assert_eq!(find_nul("- a\n"), None);
    }
}
