//! `--download`: fetch the official binary archive over HTTP(S), checking its md5 as it streams.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use md5::{Digest, Md5};

use super::error::{Error, Result};

/// Home of the official binary archive.
pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// md5 of the official binary archive, as published on the data set's home page.
pub const OFFICIAL_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";

/// Downloads `url` to `dest` unless a file with the expected md5 is already there.
///
/// The body goes to a temporary file beside `dest` and is renamed into place only when its md5
/// matches, so a failed or tampered download leaves nothing behind.
pub fn fetch(
    url: &str,
    dest: &Path,
    expected_md5: &str,
    progress: &ProgressBar,
) -> Result<PathBuf> {
    let expected = expected_md5.to_ascii_lowercase();
    if dest.is_file() && md5_file(dest)? == expected {
        progress.set_message("already downloaded (md5 ok)");
        return Ok(dest.to_path_buf());
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let fail = |reason: String| Error::Download {
        url: url.to_owned(),
        reason,
    };
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    if let Some(len) = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        progress.set_length(len);
    }
    progress.set_position(0);
    progress.set_message(format!("downloading {url}"));
    let mut body = response.into_body().into_reader();
    let mut tmp =
        crate::store::temp_file_in(dir, ".download.").map_err(|e| Error::io(dir.display(), e))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| Error::io(dest.display(), e))?;
        progress.inc(n as u64);
    }
    let found = hex(&hasher.finalize());
    if found != expected {
        return Err(Error::Md5Mismatch {
            url: url.to_owned(),
            expected,
            found,
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(dest.display(), e))?;
    tmp.persist(dest)
        .map_err(|e| Error::io(dest.display(), e.error))?;
    Ok(dest.to_path_buf())
}

/// md5 of a file, lower-case hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| Error::io(path.display(), e))?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
