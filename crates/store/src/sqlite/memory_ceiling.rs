//! A memory ceiling for each tenant query on SQLite.
//!
//! SQLite's own heap limits (`sqlite3_hard_heap_limit64`) cover the whole
//! process, so one tenant's query could not be stopped without failing the
//! ingest writer too. Instead SQLite allocates through Keyflow's allocator
//! (installed before SQLite starts, `SQLITE_CONFIG_MALLOC`): a block is
//! charged to the query running on the allocating thread, if any, and an
//! allocation that would take the query past its ceiling fails. SQLite
//! answers a failed allocation with `SQLITE_NOMEM` and stops the statement
//! cleanly, whatever was growing: a prepared statement, a sort, a hash, a
//! temporary table, a value. Other threads' allocations are never charged
//! and never refused.
//!
//! Each block carries a 16-byte header (its size and the ceiling it was
//! charged to), so a block freed on another thread, or after the query,
//! still gives its bytes back to the right account.

use std::alloc::{Layout, alloc, dealloc, realloc};
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use rusqlite::ffi;

/// Header before every block: its usable size and the account it was
/// charged to (0: none). 16 bytes keep the block 16-byte aligned.
const HEADER: usize = 16;
const ALIGN: usize = 16;

/// Accounts for queries running at once. More than the tenant query slots
/// of one instance; a query that finds none free runs without a ceiling
/// only if [`Ceiling::enter`] says so (it does not: it refuses).
const ACCOUNTS: usize = 64;

static USED: [AtomicI64; ACCOUNTS] = [const { AtomicI64::new(0) }; ACCOUNTS];
static TAKEN: [AtomicBool; ACCOUNTS] = [const { AtomicBool::new(false) }; ACCOUNTS];
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

thread_local! {
    /// The account this thread's allocations are charged to, and the value
    /// of its counter at which allocations start failing.
    static CHARGED: Cell<Option<(usize, i64)>> = const { Cell::new(None) };
}

/// Makes SQLite allocate through this module. Must run before SQLite is
/// first used in the process (any connection opened); later it has no
/// effect and [`Ceiling::enter`] refuses, so tenant queries fail closed.
pub(crate) fn install() {
    INSTALL.call_once(|| {
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
        INSTALLED.store(rc == ffi::SQLITE_OK, Ordering::SeqCst);
        if rc != ffi::SQLITE_OK {
            tracing::error!(
                rc,
                "SQLite started before Keyflow could set its allocator: tenant SQL queries are \
                 refused (no memory ceiling)"
            );
        }
    });
}

/// A query's memory ceiling, in force on this thread while it lives.
pub(crate) struct Ceiling {
    account: usize,
}

/// Why a ceiling could not be put in place.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// SQLite was started before [`install`].
    NotInstalled,
    /// Every account is in use.
    Busy,
}

impl Ceiling {
    /// Charges this thread's SQLite allocations to a fresh account until the
    /// returned value is dropped; past `max_bytes` they fail.
    pub(crate) fn enter(max_bytes: usize) -> Result<Ceiling, Unavailable> {
        if !INSTALLED.load(Ordering::SeqCst) {
            return Err(Unavailable::NotInstalled);
        }
        let account = TAKEN
            .iter()
            .position(|taken| {
                taken
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .ok_or(Unavailable::Busy)?;
        // Blocks an earlier query left behind (a connection's caches) still
        // count on this account until freed; the ceiling is above them.
        let baseline = USED[account].load(Ordering::Acquire);
        let limit = baseline.saturating_add(i64::try_from(max_bytes).unwrap_or(i64::MAX));
        CHARGED.with(|charged| charged.set(Some((account, limit))));
        Ok(Ceiling { account })
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        CHARGED.with(|charged| charged.set(None));
        TAKEN[self.account].store(false, Ordering::Release);
    }
}

/// Charges `size` bytes to this thread's account; `Some(account + 1)` to
/// record in the header (0 when nothing was charged), `None` when the
/// account's ceiling refuses them.
fn charge(size: usize) -> Option<u64> {
    let Some((account, limit)) = CHARGED.with(Cell::get) else {
        return Some(0);
    };
    let size = i64::try_from(size).ok()?;
    let before = USED[account].fetch_add(size, Ordering::AcqRel);
    if before.saturating_add(size) > limit {
        USED[account].fetch_sub(size, Ordering::AcqRel);
        return None;
    }
    Some(account as u64 + 1)
}

fn refund(tag: u64, size: usize) {
    if let (Some(account), Ok(size)) = (tag.checked_sub(1), i64::try_from(size))
        && let Some(used) = USED.get(account as usize)
    {
        used.fetch_sub(size, Ordering::AcqRel);
    }
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
    let Some(tag) = charge(size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: the layout is non-zero in size (it includes the header).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        refund(tag, size);
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
    refund(tag, size);
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
    let Some(tag) = charge(new_size) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `base` was allocated with `old_layout`; the new size is
    // non-zero and was checked by `layout`.
    let moved = unsafe { realloc(base, old_layout, new_layout.size()) };
    if moved.is_null() {
        refund(tag, new_size);
        return std::ptr::null_mut();
    }
    refund(old_tag, old_size);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_past_its_ceiling_fails_and_others_do_not() {
        install();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        // 20 000 rows of 200 bytes, sorted: about 4 MB in the sorter.
        let big = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                   WHERE i < 20000) SELECT count(*) FROM (SELECT DISTINCT \
                   printf('%.200d', i) FROM n)";
        let ceiling = Ceiling::enter(1024 * 1024).unwrap();
        let before = USED[ceiling.account].load(Ordering::Acquire);
        let refused = conn.query_row(big, [], |r| r.get::<_, i64>(0));
        assert_eq!(
            refused.unwrap_err().sqlite_error_code(),
            Some(rusqlite::ErrorCode::OutOfMemory)
        );
        assert!(USED[ceiling.account].load(Ordering::Acquire) - before <= 1024 * 1024);
        drop(ceiling);
        // Without a ceiling, and with a generous one, the same query runs.
        let all: i64 = conn.query_row(big, [], |r| r.get(0)).unwrap();
        assert_eq!(all, 20_000);
        let ceiling = Ceiling::enter(256 * 1024 * 1024).unwrap();
        let again: i64 = conn.query_row(big, [], |r| r.get(0)).unwrap();
        assert_eq!(again, 20_000);
        drop(ceiling);
        // Another thread is never charged while this one has a ceiling.
        let _tiny = Ceiling::enter(1).unwrap();
        let elsewhere =
            std::thread::spawn(move || conn.query_row(big, [], |r| r.get::<_, i64>(0)).unwrap());
        assert_eq!(elsewhere.join().unwrap(), 20_000);
    }
}
