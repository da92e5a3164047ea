use rusqlite::{Connection, OpenFlags};

use super::*;

/// 20 000 rows of 200 bytes each, distinct: about 4 MB of b-tree.
const DISTINCT: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                        WHERE i < 20000) SELECT count(*) FROM (SELECT DISTINCT \
                        printf('%.200d', i) FROM n)";

/// 200 000 rows of 200 bytes, sorted: about 40 MB, past the page cache, so
/// the sorter writes runs to a temporary file.
const SORT: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
                    WHERE i < 200000) SELECT count(*) FROM (SELECT printf('%.200d', i) \
                    AS v FROM n ORDER BY v DESC)";

const MIB: usize = 1024 * 1024;

fn count(conn: &Connection, sql: &str) -> rusqlite::Result<i64> {
    conn.query_row(sql, [], |r| r.get(0))
}

#[test]
fn a_query_past_its_memory_ceiling_fails_and_others_do_not() {
    install();
    let conn = Connection::open_in_memory().unwrap();
    let ceiling = Ceiling::enter(MIB, usize::MAX).unwrap();
    let before = MEMORY[ceiling.account].load(Ordering::Acquire);
    let refused = count(&conn, DISTINCT);
    assert_eq!(
        refused.unwrap_err().sqlite_error_code(),
        Some(rusqlite::ErrorCode::OutOfMemory)
    );
    assert!(MEMORY[ceiling.account].load(Ordering::Acquire) - before <= MIB as i64);
    drop(ceiling);
    // Without a ceiling, and with a generous one, the same query runs.
    assert_eq!(count(&conn, DISTINCT).unwrap(), 20_000);
    let ceiling = Ceiling::enter(256 * MIB, usize::MAX).unwrap();
    assert_eq!(count(&conn, DISTINCT).unwrap(), 20_000);
    drop(ceiling);
    // Another thread is never charged while this one has a ceiling.
    let _tiny = Ceiling::enter(1, 1).unwrap();
    let elsewhere = std::thread::spawn(move || count(&conn, DISTINCT).unwrap());
    assert_eq!(elsewhere.join().unwrap(), 20_000);
}

#[test]
fn temporary_files_past_the_disk_ceiling_fail_and_are_given_back() {
    install();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let conn = Connection::open_with_flags_and_vfs(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        VFS_NAME,
    )
    .unwrap();
    let ceiling = Ceiling::enter(usize::MAX, MIB).unwrap();
    let before = DISK[ceiling.account].load(Ordering::Acquire);
    let refused = count(&conn, SORT);
    assert_eq!(
        refused.unwrap_err().sqlite_error_code(),
        Some(rusqlite::ErrorCode::DiskFull)
    );
    // The sorter's files are closed with the statement: all given back.
    assert_eq!(DISK[ceiling.account].load(Ordering::Acquire), before);
    drop(ceiling);
    let ceiling = Ceiling::enter(usize::MAX, 1024 * MIB).unwrap();
    let before = DISK[ceiling.account].load(Ordering::Acquire);
    assert_eq!(count(&conn, SORT).unwrap(), 200_000);
    assert_eq!(DISK[ceiling.account].load(Ordering::Acquire), before);
    drop(ceiling);
}
