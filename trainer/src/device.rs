//! Choosing the libtorch device.
//!
//! The `shardrec` binary links libtorch with `--as-needed`, which drops
//! `libtorch_cuda.so` (nothing references its symbols directly), so libtorch would report
//! no CUDA device. When a CUDA device is asked for, the library is loaded explicitly first
//! (`dlopen`, global symbols) so its kernels register, then availability is checked.

use tch::Device;

/// Why a device setting cannot be used; `key` is the setting (`train.device` or
/// `embedding.device`).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{key} = \"{name}\" is not a device")]
    BadIndex { key: &'static str, name: String },
    #[error("{key} = \"{name}\": use \"cpu\", \"cuda\" or \"cuda:N\"")]
    Unknown { key: &'static str, name: String },
    #[error("{key} = \"{name}\" but libtorch sees no CUDA device")]
    NoCuda { key: &'static str, name: String },
    #[error("{key} = \"{name}\" but only {count} CUDA devices exist")]
    NoSuchCuda {
        key: &'static str,
        name: String,
        count: usize,
    },
    #[error("a CUDA device was asked for but libtorch_cuda.so could not be loaded: {0}")]
    CudaLibrary(String),
}

/// Resolves the setting `key` = `"cpu"`, `"cuda"` or `"cuda:N"`; `local_rank` picks the
/// GPU for `"cuda"`.
pub fn resolve_device(
    key: &'static str,
    name: &str,
    local_rank: usize,
) -> Result<Device, DeviceError> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let name_owned = || name.to_string();
    let index = match name.strip_prefix("cuda") {
        Some("") => None,
        Some(rest) => Some(rest.trim_start_matches(':').parse::<usize>().map_err(|_| {
            DeviceError::BadIndex {
                key,
                name: name_owned(),
            }
        })?),
        None => {
            return Err(DeviceError::Unknown {
                key,
                name: name_owned(),
            })
        }
    };
    load_cuda_library()?;
    let count = tch::Cuda::device_count() as usize;
    if count == 0 {
        return Err(DeviceError::NoCuda {
            key,
            name: name_owned(),
        });
    }
    let i = index.unwrap_or(local_rank % count);
    if i >= count {
        return Err(DeviceError::NoSuchCuda {
            key,
            name: name_owned(),
            count,
        });
    }
    Ok(Device::Cuda(i))
}

fn load_cuda_library() -> Result<(), DeviceError> {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept for the life of
    // the process on purpose (the library must stay loaded).
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local message or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: a non-null dlerror result is a NUL-terminated string, valid until
            // the next dl* call on this thread; it is copied out at once.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(DeviceError::CudaLibrary(msg));
    }
    Ok(())
}
