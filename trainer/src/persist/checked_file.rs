//! Files whose size and CRC32 are recorded when written and checked when read, so a
//! truncated or corrupted file is refused naming it rather than loaded. Writers sync the
//! file before reporting its checksum; [`sync_dir`] makes a rename durable. Used by saved
//! models and by checkpoints.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// A file of a saved folder: its path inside the folder, size and CRC32.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SavedFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// Errors of writing and reading checked files: the file and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelIoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: libtorch: {source}")]
    Torch {
        path: PathBuf,
        source: tch::TchError,
    },
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelIoError + '_ {
    move |source| ModelIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams a file through a writer while computing its CRC32.
pub struct CrcWriter {
    inner: BufWriter<std::fs::File>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl CrcWriter {
    pub fn create(path: &Path) -> Result<Self, ModelIoError> {
        Ok(Self {
            inner: BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path).map_err(io(path))?,
            ),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        })
    }

    /// Appends little-endian f32s.
    pub fn write_f32s(&mut self, v: &[f32]) -> std::io::Result<()> {
        for chunk in v.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.crc.update(&bytes);
            self.inner.write_all(&bytes)?;
            self.bytes += bytes.len() as u64;
        }
        Ok(())
    }

    /// Flushes and syncs the file; returns its size and CRC32.
    pub fn finish(mut self) -> std::io::Result<(u64, u32)> {
        self.inner.flush()?;
        self.inner.get_ref().sync_all()?;
        Ok((self.bytes, self.crc.finalize()))
    }
}

/// Size and CRC32 of a file as it is on disk.
pub fn file_crc(path: &Path) -> Result<(u64, u32), ModelIoError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize()))
}

/// Syncs a file already written by other means (libtorch, a copy) and records it.
pub fn record(dir: &Path, rel: &str) -> Result<SavedFile, ModelIoError> {
    let path = dir.join(rel);
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io(&path))?;
    let (bytes, crc32) = file_crc(&path)?;
    Ok(SavedFile {
        path: rel.to_string(),
        bytes,
        crc32,
    })
}

/// Makes entries created or renamed in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), ModelIoError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}

fn check(path: &Path, f: &SavedFile, bytes: u64, crc: u32) -> Result<(), ModelIoError> {
    if bytes != f.bytes {
        return Err(ModelIoError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "{bytes} bytes, the manifest says {} (truncated or incomplete file)",
                f.bytes
            ),
        });
    }
    if crc != f.crc32 {
        return Err(ModelIoError::Corrupt {
            path: path.to_path_buf(),
            message: "checksum mismatch (corrupt file)".into(),
        });
    }
    Ok(())
}

/// `dir/rel` for a path a manifest lists, refused when it would leave the folder (an
/// absolute path, `..`): an edited manifest must not make us read other files.
pub fn inside(dir: &Path, rel: &str) -> Result<PathBuf, ModelIoError> {
    let leaves = Path::new(rel).components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if leaves || rel.is_empty() {
        return Err(ModelIoError::Corrupt {
            path: dir.to_path_buf(),
            message: format!("the manifest lists `{rel}`, a path that leaves the folder"),
        });
    }
    Ok(dir.join(rel))
}

/// Checks a saved file's size and checksum.
pub fn verify(dir: &Path, f: &SavedFile) -> Result<(), ModelIoError> {
    let path = inside(dir, &f.path)?;
    let (bytes, crc) = file_crc(&path)?;
    check(&path, f, bytes, crc)
}

/// Maps a saved file read-only after checking its size and checksum.
pub fn map_verified(dir: &Path, f: &SavedFile) -> Result<Mmap, ModelIoError> {
    let path = inside(dir, &f.path)?;
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();
    if len != f.bytes {
        return check(&path, f, len, f.crc32).map(|_| unreachable!());
    }
    // SAFETY: the file is opened read-only; shardrec never writes a saved folder's files
    // after their manifest exists, so the mapping does not change under us.
    let map = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
    let crc = crc32fast::hash(&map);
    check(&path, f, map.len() as u64, crc)?;
    Ok(map)
}

/// A mapped file of little-endian f32s as a slice.
/// The file `rel` a manifest lists in `files`, mapped after its size and checksum are
/// checked; refused, naming it, when the manifest does not list it.
pub fn map_listed(dir: &Path, files: &[SavedFile], rel: &str) -> Result<Mmap, ModelIoError> {
    let f = files
        .iter()
        .find(|f| f.path == rel)
        .ok_or_else(|| ModelIoError::Corrupt {
            path: dir.join(rel),
            message: "not listed among the manifest's files".into(),
        })?;
    map_verified(dir, f)
}

/// [`map_listed`] of a little-endian f32 file, copied out.
pub fn listed_f32s(dir: &Path, files: &[SavedFile], rel: &str) -> Result<Vec<f32>, ModelIoError> {
    Ok(as_f32s(&dir.join(rel), &map_listed(dir, files, rel)?)?.to_vec())
}

pub fn as_f32s<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [f32], ModelIoError> {
    #[cfg(not(target_endian = "little"))]
    compile_error!("saved tables are little-endian f32; a big-endian reader is not written");
    // SAFETY: every bit pattern is a valid f32; align_to only reinterprets the aligned
    // middle, and we refuse any unaligned prefix or suffix.
    let (head, floats, tail) = unsafe { bytes.align_to::<f32>() };
    if !head.is_empty() || !tail.is_empty() {
        return Err(ModelIoError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes is not a whole number of aligned f32 values",
                bytes.len()
            ),
        });
    }
    Ok(floats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest entry that climbs out of the folder is refused even when the file it
    /// names exists and matches its size and checksum.
    #[test]
    fn manifest_paths_that_leave_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("model");
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::write(dir.path().join("secret"), b"not yours").unwrap();
        std::fs::write(saved.join("own.bin"), b"mine").unwrap();
        let entry = |path: &str, bytes: &[u8]| SavedFile {
            path: path.into(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        };
        assert!(verify(&saved, &entry("own.bin", b"mine")).is_ok());
        for path in ["../secret", "tables/../../secret"] {
            let e = verify(&saved, &entry(path, b"not yours")).unwrap_err();
            assert!(e.to_string().contains("leaves the folder"), "{e}");
            assert!(map_verified(&saved, &entry(path, b"not yours")).is_err());
        }
        let abs = dir.path().join("secret");
        let e = verify(&saved, &entry(abs.to_str().unwrap(), b"not yours")).unwrap_err();
        assert!(e.to_string().contains("leaves the folder"), "{e}");
    }
}
