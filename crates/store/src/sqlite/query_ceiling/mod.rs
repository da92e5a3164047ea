//! Ceilings for each tenant query on SQLite: memory, and temporary files.
//!
//! SQLite's own limits here cover the whole process (`sqlite3_hard_heap_limit64`)
//! or nothing (its sorter and temporary tables write files of any size), so
//! one tenant's query could not be stopped without failing the ingest
//! writer too. Instead:
//! - SQLite allocates through Keyflow's allocator ([`allocator`], installed
//!   before SQLite starts), which charges each block to the query running
//!   on the allocating thread, if any, and fails an allocation that would
//!   take the query past its memory ceiling: SQLite answers `SQLITE_NOMEM`
//!   and stops the statement cleanly, whatever was growing (a prepared
//!   statement, a sort, a hash, a value).
//! - Tenant connections open their files through a VFS ([`temp_files`])
//!   that charges the bytes written (temporary files: sorts past the page
//!   cache, `DISTINCT` and `GROUP BY` tables) to the same query and fails a
//!   write past its disk ceiling with `SQLITE_FULL`.
//!
//! Other threads' allocations and files are never charged or refused.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

mod allocator;
mod temp_files;

pub(crate) use temp_files::VFS_NAME;

/// Accounts for queries running at once: more than one instance's tenant
/// query slots. A query that finds none free is refused, never unbounded.
const ACCOUNTS: usize = 64;

static MEMORY: [AtomicI64; ACCOUNTS] = [const { AtomicI64::new(0) }; ACCOUNTS];
static DISK: [AtomicI64; ACCOUNTS] = [const { AtomicI64::new(0) }; ACCOUNTS];
static TAKEN: [AtomicBool; ACCOUNTS] = [const { AtomicBool::new(false) }; ACCOUNTS];
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// What this thread's SQLite work is charged to.
#[derive(Clone, Copy)]
struct Charged {
    account: usize,
    /// Counter values at which allocations, and writes, start failing.
    memory_limit: i64,
    disk_limit: i64,
}

thread_local! {
    static CHARGED: Cell<Option<Charged>> = const { Cell::new(None) };
}

/// Sets SQLite's allocator and registers the tenant VFS. Must run before
/// SQLite is first used in the process (any connection opened); later the
/// allocator cannot be set, and [`Ceiling::enter`] refuses, so tenant
/// queries fail closed.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        let ready = allocator::install() && temp_files::register();
        INSTALLED.store(ready, Ordering::SeqCst);
        if !ready {
            tracing::error!(
                "SQLite started before Keyflow could set its allocator: tenant SQL queries are \
                 refused (no memory ceiling)"
            );
        }
    });
}

/// A query's ceilings, in force on this thread while the value lives.
pub(crate) struct Ceiling {
    account: usize,
}

/// Why the ceilings could not be put in place.
#[derive(Debug)]
pub(crate) enum Unavailable {
    /// SQLite was started before [`install`].
    NotInstalled,
    /// Every account is in use.
    Busy,
}

impl Ceiling {
    /// Charges this thread's SQLite allocations and tenant-file writes to a
    /// fresh account until the returned value is dropped; past `memory`
    /// and `disk` bytes they fail.
    pub(crate) fn enter(memory: usize, disk: usize) -> Result<Ceiling, Unavailable> {
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
        // count on this account until freed: the ceiling is above them.
        let above = |counter: &AtomicI64, bytes: usize| {
            counter
                .load(Ordering::Acquire)
                .saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX))
        };
        let charged = Charged {
            account,
            memory_limit: above(&MEMORY[account], memory),
            disk_limit: above(&DISK[account], disk),
        };
        CHARGED.with(|c| c.set(Some(charged)));
        Ok(Ceiling { account })
    }
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        CHARGED.with(|c| c.set(None));
        TAKEN[self.account].store(false, Ordering::Release);
    }
}

/// Which counter a charge goes to.
#[derive(Clone, Copy)]
enum Resource {
    Memory,
    Disk,
}

impl Resource {
    fn counters(self) -> &'static [AtomicI64; ACCOUNTS] {
        match self {
            Resource::Memory => &MEMORY,
            Resource::Disk => &DISK,
        }
    }
}

/// Charges `bytes` to this thread's account. `Some(tag)` to remember with
/// what was charged (0: nothing was, no ceiling in force), `None` when the
/// ceiling refuses them.
fn charge(resource: Resource, bytes: usize) -> Option<u64> {
    let Some(charged) = CHARGED.with(Cell::get) else {
        return Some(0);
    };
    let limit = match resource {
        Resource::Memory => charged.memory_limit,
        Resource::Disk => charged.disk_limit,
    };
    let bytes = i64::try_from(bytes).ok()?;
    let counter = &resource.counters()[charged.account];
    let before = counter.fetch_add(bytes, Ordering::AcqRel);
    if before.saturating_add(bytes) > limit {
        counter.fetch_sub(bytes, Ordering::AcqRel);
        return None;
    }
    Some(charged.account as u64 + 1)
}

/// Gives back `bytes` charged under `tag` (whatever thread, whenever).
fn refund(resource: Resource, tag: u64, bytes: usize) {
    if let (Some(account), Ok(bytes)) = (tag.checked_sub(1), i64::try_from(bytes))
        && let Some(counter) = resource.counters().get(account as usize)
    {
        counter.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Adds `bytes` to `tag`'s account whatever its ceiling: bytes that exist
/// already and change hands.
fn move_in(resource: Resource, tag: u64, bytes: usize) {
    if let (Some(account), Ok(bytes)) = (tag.checked_sub(1), i64::try_from(bytes))
        && let Some(counter) = resource.counters().get(account as usize)
    {
        counter.fetch_add(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
