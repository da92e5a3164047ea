//! The VFS tenant connections open their files through: the platform's
//! own, with every byte a file grows by charged to the tenant query on the
//! writing thread (see the module above). A tenant connection is read-only,
//! so what it writes are temporary files: the sorter's runs past the page
//! cache, `DISTINCT`/`GROUP BY`/window tables, materialised `WITH` queries.
//! A file's bytes are given back when it shrinks or is closed (temporary
//! files are deleted on close).

use std::ffi::{CStr, c_int, c_void};
use std::mem::size_of;

use rusqlite::ffi::{self, sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::{Resource, charge, move_in, refund};

/// The name tenant connections pass to `sqlite3_open_v2`.
pub(crate) const VFS_NAME: &CStr = c"keyflow-tenant";

/// A file opened through this VFS: SQLite's header, what it has been
/// charged, then the platform VFS's own file.
#[repr(C)]
struct TenantFile {
    base: sqlite3_file,
    /// The account charged (0: none) and for how many bytes: the file's
    /// high-water size.
    tag: u64,
    charged: i64,
    inner: *mut sqlite3_file,
}

/// Registers the VFS (not as the default); false if SQLite refused.
pub(super) fn register() -> bool {
    // SAFETY: finding the default VFS has no preconditions; it lives for
    // the whole process.
    let platform = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if platform.is_null() {
        return false;
    }
    // SAFETY: `platform` is a registered VFS, never freed.
    let mut vfs: sqlite3_vfs = unsafe { *platform };
    let Some(inner_size) = usize::try_from(vfs.szOsFile)
        .ok()
        .and_then(|n| n.checked_add(size_of::<TenantFile>()))
        .and_then(|n| c_int::try_from(n).ok())
    else {
        return false;
    };
    // Every other method is the platform's own: they read only the
    // fields copied with it (`pAppData`, `mxPathname`).
    vfs.szOsFile = inner_size;
    vfs.zName = VFS_NAME.as_ptr();
    vfs.pNext = std::ptr::null_mut();
    vfs.xOpen = Some(x_open);
    PLATFORM.set(platform as usize).ok();
    let vfs: &'static mut sqlite3_vfs = Box::leak(Box::new(vfs));
    // SAFETY: the VFS is leaked, so it outlives every connection.
    unsafe { ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK }
}

/// The platform VFS, as an address (raw pointers are not `Sync`).
static PLATFORM: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

unsafe extern "C" fn x_open(
    _vfs: *mut sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(&platform) = PLATFORM.get() else {
        return ffi::SQLITE_CANTOPEN;
    };
    let platform = platform as *mut sqlite3_vfs;
    let outer = file.cast::<TenantFile>();
    // SAFETY: SQLite gives `szOsFile` bytes at `file`: a TenantFile, then
    // the platform file.
    unsafe {
        let inner = file.cast::<u8>().add(size_of::<TenantFile>()).cast();
        outer.write(TenantFile {
            base: sqlite3_file {
                pMethods: std::ptr::null(),
            },
            tag: 0,
            charged: 0,
            inner,
        });
        let Some(open) = (*platform).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(platform, name, inner, flags, out_flags);
        // A failed open leaves no methods, so SQLite will not close it.
        if rc == ffi::SQLITE_OK && !(*inner).pMethods.is_null() {
            (*outer).base.pMethods = &METHODS;
        }
        rc
    }
}

/// The platform file's methods and the file itself.
///
/// SAFETY: `file` is a TenantFile this VFS opened.
unsafe fn inner(file: *mut sqlite3_file) -> (&'static sqlite3_io_methods, *mut sqlite3_file) {
    // SAFETY: see above; an open platform file has methods.
    unsafe {
        let inner = (*file.cast::<TenantFile>()).inner;
        (&*(*inner).pMethods, inner)
    }
}

/// Charges a file growing to `end` bytes to this thread's query; false if
/// its ceiling refuses them. The bytes the file already held move to that
/// query's account too (a connection's temporary database outlives one
/// query), so a file's bytes are always on one account.
///
/// SAFETY: `file` is a TenantFile this VFS opened.
unsafe fn grow_to(file: *mut sqlite3_file, end: i64) -> bool {
    // SAFETY: see above.
    let outer = unsafe { &mut *file.cast::<TenantFile>() };
    let Ok(more) = usize::try_from(end - outer.charged) else {
        return true; // not growing
    };
    if more == 0 {
        return true;
    }
    let Some(tag) = charge(Resource::Disk, more) else {
        return false;
    };
    if tag != outer.tag {
        let held = usize::try_from(outer.charged).unwrap_or(0);
        refund(Resource::Disk, outer.tag, held);
        move_in(Resource::Disk, tag, held);
        outer.tag = tag;
    }
    outer.charged = end;
    true
}

/// Gives back what a file no longer holds past `end` bytes.
///
/// SAFETY: `file` is a TenantFile this VFS opened.
unsafe fn shrink_to(file: *mut sqlite3_file, end: i64) {
    // SAFETY: see above.
    let outer = unsafe { &mut *file.cast::<TenantFile>() };
    if end < outer.charged {
        let freed = usize::try_from(outer.charged - end.max(0)).unwrap_or(0);
        refund(Resource::Disk, outer.tag, freed);
        outer.charged = end.max(0);
    }
}

unsafe extern "C" fn x_close(file: *mut sqlite3_file) -> c_int {
    // SAFETY: SQLite calls the methods only on files this VFS opened.
    unsafe {
        shrink_to(file, 0);
        let (methods, inner) = inner(file);
        methods.xClose.map_or(ffi::SQLITE_OK, |f| f(inner))
    }
}

unsafe extern "C" fn x_write(
    file: *mut sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: sqlite3_int64,
) -> c_int {
    // SAFETY: as for x_close.
    unsafe {
        if !grow_to(file, offset.saturating_add(i64::from(amount))) {
            return ffi::SQLITE_FULL;
        }
        let (methods, inner) = inner(file);
        methods
            .xWrite
            .map_or(ffi::SQLITE_IOERR_WRITE, |f| f(inner, data, amount, offset))
    }
}

unsafe extern "C" fn x_truncate(file: *mut sqlite3_file, size: sqlite3_int64) -> c_int {
    // SAFETY: as for x_close.
    unsafe {
        let (methods, inner) = inner(file);
        let rc = methods
            .xTruncate
            .map_or(ffi::SQLITE_IOERR_TRUNCATE, |f| f(inner, size));
        if rc == ffi::SQLITE_OK {
            shrink_to(file, size);
        }
        rc
    }
}

unsafe extern "C" fn x_file_control(file: *mut sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: as for x_close.
    unsafe {
        // Growing a file ahead of writes (the sorter asks to) is charged
        // like a write.
        if op == ffi::SQLITE_FCNTL_SIZE_HINT
            && !arg.is_null()
            && !grow_to(file, *arg.cast::<sqlite3_int64>())
        {
            return ffi::SQLITE_FULL;
        }
        let (methods, inner) = inner(file);
        methods
            .xFileControl
            .map_or(ffi::SQLITE_NOTFOUND, |f| f(inner, op, arg))
    }
}

/// Methods passed straight through to the platform file.
macro_rules! passed_through {
    ($($name:ident => $field:ident($($arg:ident: $ty:ty),*) -> $ret:ty, $missing:expr;)*) => {
        $(
            unsafe extern "C" fn $name(file: *mut sqlite3_file $(, $arg: $ty)*) -> $ret {
                // SAFETY: as for x_close.
                unsafe {
                    let (methods, inner) = inner(file);
                    methods.$field.map_or($missing, |f| f(inner $(, $arg)*))
                }
            }
        )*
    };
}

passed_through! {
    x_read => xRead(data: *mut c_void, amount: c_int, offset: sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_READ;
    x_sync => xSync(flags: c_int) -> c_int, ffi::SQLITE_OK;
    x_file_size => xFileSize(size: *mut sqlite3_int64) -> c_int, ffi::SQLITE_IOERR_FSTAT;
    x_lock => xLock(level: c_int) -> c_int, ffi::SQLITE_OK;
    x_unlock => xUnlock(level: c_int) -> c_int, ffi::SQLITE_OK;
    x_check_reserved_lock => xCheckReservedLock(out: *mut c_int) -> c_int, ffi::SQLITE_OK;
    x_sector_size => xSectorSize() -> c_int, 4096;
    x_device_characteristics => xDeviceCharacteristics() -> c_int, 0;
    x_shm_map => xShmMap(page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR_SHMMAP;
    x_shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int) -> c_int, ffi::SQLITE_IOERR_SHMLOCK;
    x_shm_unmap => xShmUnmap(delete: c_int) -> c_int, ffi::SQLITE_OK;
    x_fetch => xFetch(offset: sqlite3_int64, amount: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_OK;
    x_unfetch => xUnfetch(offset: sqlite3_int64, page: *mut c_void) -> c_int, ffi::SQLITE_OK;
}

unsafe extern "C" fn x_shm_barrier(file: *mut sqlite3_file) {
    // SAFETY: as for x_close.
    unsafe {
        let (methods, inner) = inner(file);
        if let Some(f) = methods.xShmBarrier {
            f(inner);
        }
    }
}

static METHODS: sqlite3_io_methods = sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};
