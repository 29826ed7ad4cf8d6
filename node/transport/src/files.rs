//! PEM files on disk: reading them with errors that name the file, and writing them atomically
//! (private keys with mode 0600 on unix).

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

/// The first certificate of a PEM file read from `path` (named in errors).
pub(super) fn parse_cert_pem(pem: &str, path: &Path) -> Result<CertificateDer<'static>> {
    match crate::x509::pem_certs(pem) {
        Ok(certs) => certs
            .into_iter()
            .next()
            .ok_or_else(|| tls_err(format!("no certificate in {}", path.display()))),
        Err(e) => Err(tls_err(format!(
            "corrupt certificate {}: {e}",
            path.display()
        ))),
    }
}

/// Reads a PEM file; a missing file gives an error saying "missing {what} file {path}".
pub(super) fn read_file(path: &Path, what: &str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => tls_err(format!("missing {what} file {}", path.display())),
        _ => tls_err(format!("cannot read {what} file {}: {e}", path.display())),
    })
}

/// Writes `contents` to `path` via a temporary file and a rename, so a crash never leaves a
/// half-written key behind; `private` files are created with mode 0600 on unix.
pub(super) fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let io_err =
        |p: &Path, e: std::io::Error| tls_err(format!("cannot write {}: {e}", p.display()));
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp: PathBuf = dir.join(tmp_name);
    // A leftover temporary file from a crash may have wider permissions, which `mode` below
    // would not narrow (it applies only on creation), so start from scratch.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp, e)),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(|e| io_err(&tmp, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Refuses a private key file that other users may read or write (unix mode bits 0o077), naming
/// the file and the fix; `allow_open` accepts it anyway. A missing file is
/// left to the reader to report.
pub(super) fn check_private(path: &Path, what: &str, allow_open: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let Ok(meta) = fs::metadata(path) else {
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && !allow_open {
            return Err(tls_err(format!(
                "{what} {} is accessible to other users (mode {mode:04o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what, allow_open);
    Ok(())
}
