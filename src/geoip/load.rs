//! Getting a GeoIP database: a local file, or a download (a plain `.mmdb`,
//! or the `.tar.gz` MaxMind serves with the `.mmdb` inside, told apart by
//! their first bytes). Parsing and checking run on the blocking pool.

use std::io::Read;
use std::path::Path;

use maxminddb::Reader;

/// A loaded database.
pub struct Database {
    pub(super) reader: Reader<Vec<u8>>,
}

impl Database {
    /// `database_type` and build time (Unix seconds), for the log.
    pub fn describe(&self) -> (String, u64) {
        let m = self.reader.metadata();
        (m.database_type.clone(), m.build_epoch)
    }
}

/// The largest download taken (GeoLite2-Country is some MB, City ~70 MB).
pub const MAX_DOWNLOAD: usize = 256 << 20;

/// Parses and verifies database bytes as downloaded (gzip and tar unpacked).
pub fn from_download(bytes: Vec<u8>) -> Result<Database, String> {
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(MAX_DOWNLOAD as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("not a valid .gz file: {e}"))?;
        if out.len() > MAX_DOWNLOAD {
            return Err(format!("unpacked, it is over {MAX_DOWNLOAD} bytes"));
        }
        out
    } else {
        bytes
    };
    let bytes = if is_tar(&bytes) {
        mmdb_in_tar(&bytes)?
    } else {
        bytes
    };
    from_bytes(bytes)
}

/// Parses and verifies a `.mmdb` file.
pub fn from_file(path: &Path) -> Result<Database, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    from_bytes(bytes)
}

fn from_bytes(bytes: Vec<u8>) -> Result<Database, String> {
    let reader = Reader::from_source(bytes).map_err(|e| format!("not a MaxMind database: {e}"))?;
    reader
        .verify()
        .map_err(|e| format!("the MaxMind database is corrupt: {e}"))?;
    Ok(Database { reader })
}

/// A POSIX tar archive ("ustar" at offset 257).
fn is_tar(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

/// The first `*.mmdb` member of a tar archive.
fn mmdb_in_tar(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a valid tar file: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a valid tar file: {e}"))?;
        let is_mmdb = entry
            .path()
            .is_ok_and(|p| p.extension().is_some_and(|x| x == "mmdb"));
        if !is_mmdb {
            continue;
        }
        let mut out = Vec::new();
        entry
            .read_to_end(&mut out)
            .map_err(|e| format!("not a valid tar file: {e}"))?;
        return Ok(out);
    }
    Err("the archive has no .mmdb file".into())
}

/// What `check` says of `[geoip] url`/`license`: a file is loaded and
/// verified; a URL is asked with HEAD (a download counts against
/// MaxMind's daily limit).
pub async fn probe(source: &crate::config::geoip::GeoIpSource) -> Result<String, String> {
    use crate::config::geoip::GeoIpSource;
    match source {
        GeoIpSource::File(path) => {
            let p = path.clone();
            let db = tokio::task::spawn_blocking(move || from_file(&p))
                .await
                .map_err(|e| e.to_string())??;
            let (kind, _) = db.describe();
            Ok(format!("{}: a {kind} database", path.display()))
        }
        GeoIpSource::Url(url) => {
            let shown = crate::logsafe::Url(url);
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .redirect(reqwest::redirect::Policy::limited(5))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .head(url)
                .send()
                .await
                .map_err(|e| format!("{shown}: {}", e.without_url()))?;
            if resp.status().is_success() {
                Ok(format!("{shown} answered {}", resp.status()))
            } else {
                Err(format!("{shown} answered {}", resp.status()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_refused_with_a_reason() {
        assert!(from_download(b"hello".to_vec())
            .err()
            .unwrap()
            .contains("not a MaxMind database"));
        assert!(from_download(vec![0x1f, 0x8b, 1, 2, 3])
            .err()
            .unwrap()
            .contains(".gz"));
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(from_download(tar).is_err());
        assert!(from_file(Path::new("/nonexistent/geo.mmdb"))
            .err()
            .unwrap()
            .contains("cannot read"));
    }
}
