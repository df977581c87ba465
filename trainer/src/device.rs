//! Choosing the libtorch device.
//!
//! The `shardrec` binary links libtorch with `--as-needed`, which drops
//! `libtorch_cuda.so` (nothing references its symbols directly), so libtorch would report
//! no CUDA device. When a CUDA device is asked for, the library is loaded explicitly first
//! (`dlopen`, global symbols) so its kernels register, then availability is checked.

use tch::Device;

/// Resolves `"cpu"`, `"cuda"` or `"cuda:N"`; `local_rank` picks the GPU for `"cuda"`.
pub fn resolve_device(name: &str, local_rank: usize) -> Result<Device, String> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => None,
        Some(rest) => Some(
            rest.trim_start_matches(':')
                .parse::<usize>()
                .map_err(|_| format!("train.device = \"{name}\" is not a device"))?,
        ),
        None => {
            return Err(format!(
                "train.device = \"{name}\": use \"cpu\", \"cuda\" or \"cuda:N\""
            ))
        }
    };
    load_cuda_library()?;
    let count = tch::Cuda::device_count() as usize;
    if count == 0 {
        return Err(format!(
            "train.device = \"{name}\" but libtorch sees no CUDA device"
        ));
    }
    let i = index.unwrap_or(local_rank % count);
    if i >= count {
        return Err(format!(
            "train.device = \"{name}\" but only {count} CUDA devices exist"
        ));
    }
    Ok(Device::Cuda(i))
}

fn load_cuda_library() -> Result<(), String> {
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
        return Err(format!(
            "a CUDA device was asked for but libtorch_cuda.so could not be loaded: {msg}"
        ));
    }
    Ok(())
}
