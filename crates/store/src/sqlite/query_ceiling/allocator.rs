//! SQLite's allocator: Rust's, with every block charged to the tenant query
//! running on the allocating thread (see the module above).
//!
//! Each block carries a 16-byte header (its size and the account it was
//! charged to), so a block freed on another thread, or after the query,
//! still gives its bytes back to the right account.

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::ffi::{c_int, c_void};

use rusqlite::ffi;

use super::{Resource, charge, refund};

/// Header before every block: its usable size and the account it was
/// charged to (0: none). 16 bytes keep the block 16-byte aligned.
const HEADER: usize = 16;
const ALIGN: usize = 16;

/// Makes SQLite allocate through this module; false if SQLite had
/// already started.
pub(super) fn install() -> bool {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a
    // sqlite3_mem_methods, which SQLite copies before returning.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods) };
    rc == ffi::SQLITE_OK
}

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, ALIGN).ok()
}

/// SAFETY (for the readers below): `block` was returned by this allocator,
/// so `HEADER` bytes before it hold its size and tag.
unsafe fn header(block: *mut c_void) -> (*mut u8, usize, u64) {
    // SAFETY: see above.
    unsafe {
        let base = block.cast::<u8>().sub(HEADER);
        let size = base.cast::<u64>().read() as usize;
        let tag = base.add(8).cast::<u64>().read();
        (base, size, tag)
    }
}

/// SAFETY: `base` points to at least `HEADER` writable bytes.
unsafe fn finish(base: *mut u8, size: usize, tag: u64) -> *mut c_void {
    // SAFETY: see above.
    unsafe {
        base.cast::<u64>().write(size as u64);
        base.add(8).cast::<u64>().write(tag);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Ok(size) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let Some(layout) = layout(size) else {
        return std::ptr::null_mut();
    };
    let Some(tag) = charge(Resource::Memory, size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout is non-zero in size (it includes the header).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        refund(Resource::Memory, tag, size);
        return std::ptr::null_mut();
    }
    // SAFETY: `base` holds HEADER + size bytes.
    unsafe { finish(base, size, tag) }
}

unsafe extern "C" fn x_free(block: *mut c_void) {
    if block.is_null() {
        return;
    }
    // SAFETY: SQLite frees only what this allocator returned.
    let (base, size, tag) = unsafe { header(block) };
    refund(Resource::Memory, tag, size);
    if let Some(layout) = layout(size) {
        // SAFETY: allocated with this very layout.
        unsafe { dealloc(base, layout) };
    }
}

unsafe extern "C" fn x_realloc(block: *mut c_void, n: c_int) -> *mut c_void {
    if block.is_null() {
        // SAFETY: same contract as malloc.
        return unsafe { x_malloc(n) };
    }
    let Ok(new_size) = usize::try_from(n) else {
        return std::ptr::null_mut();
    };
    let Some(new_layout) = layout(new_size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: SQLite reallocates only what this allocator returned.
    let (base, old_size, old_tag) = unsafe { header(block) };
    let Some(old_layout) = layout(old_size) else {
        return std::ptr::null_mut();
    };
    // The new size is charged to the account in force now; the old one
    // goes back to where it was charged, once the move has succeeded.
    let Some(tag) = charge(Resource::Memory, new_size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `base` was allocated with `old_layout`; the new size is
    // non-zero and was checked by `layout`.
    let moved = unsafe { realloc(base, old_layout, new_layout.size()) };
    if moved.is_null() {
        refund(Resource::Memory, tag, new_size);
        return std::ptr::null_mut();
    }
    refund(Resource::Memory, old_tag, old_size);
    // SAFETY: `moved` holds HEADER + new_size bytes.
    unsafe { finish(moved, new_size, tag) }
}

unsafe extern "C" fn x_size(block: *mut c_void) -> c_int {
    if block.is_null() {
        return 0;
    }
    // SAFETY: SQLite asks only about what this allocator returned.
    let (_, size, _) = unsafe { header(block) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.checked_add(7).map_or(n, |n| n & !7)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}
