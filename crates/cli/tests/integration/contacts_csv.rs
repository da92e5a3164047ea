//! `keyflow contacts import` and `export` (SPEC §9) as real processes:
//! rows upserted with their problems reported by line, `--dry-run` writing
//! nothing, re-runs updating the same contacts, an export that imports into
//! another instance as the same contacts, and a large file imported in
//! bounded memory.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::backend_tests;
use crate::cli::{BIN, keyflow, keyflow_text, password_file};
use crate::harness::{Backend, TestDb};

/// A fresh database with one pro workspace and a project; the project's id.
pub(crate) fn initialised(db: &TestDb) -> String {
    let pw = password_file();
    let (ok, init, err) = keyflow(
        db,
        &[
            "init",
            "--email",
            "owner@example.com",
            "--password-file",
            pw.path().to_str().unwrap(),
            "--workspace",
            "Acme",
            "--project",
            "Prod",
            "--plan",
            "pro",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    init["project"]["id"].as_str().unwrap().to_string()
}

fn csv_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn import(db: &TestDb, project: &str, file: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "contacts",
        "import",
        file.to_str().unwrap(),
        "--project",
        project,
    ];
    args.extend_from_slice(extra);
    args.push("--json");
    let (ok, summary, err) = keyflow(db, &args);
    assert!(ok, "{err}");
    summary
}

/// The export's rows (header first), the data rows sorted.
fn export(db: &TestDb, project: &str) -> Vec<Vec<String>> {
    let (ok, text, err) = keyflow_text(db, &["contacts", "export", "--project", project]);
    assert!(ok, "{err}");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    rows[1..].sort();
    rows
}

const FILE: &str = "\
email,external_id,first_name,subscribed,plan,properties.seats,properties.code,id
ada@example.com,u1,Ada,true,pro,5,\"\"\"42\"\"\",ignored
bob@example.com,,Bob,no,free,,,
not-an-email,u3,,,,,,
,,Nobody,,,,,
carol@example.com,u4,\"Carol, the second\",1,\"multi
line\",2,,
dave@example.com,u5,Dave,maybe,,,,
eve@example.com,u6
";

async fn import_upserts_rows_and_export_round_trips(backend: Backend) {
    let db = TestDb::create(backend).await;
    let project = initialised(&db);
    let file = csv_file(FILE);

    let dry = import(&db, &project, file.path(), &["--dry-run"]);
    assert_eq!(
        (
            &dry["rows"],
            &dry["created"],
            &dry["updated"],
            &dry["rejected"]
        ),
        (
            &Value::from(7),
            &Value::from(3),
            &Value::from(0),
            &Value::from(4)
        ),
        "{dry}"
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(export(&db, &project).len(), 1, "a dry run writes nothing");

    let first = import(&db, &project, file.path(), &[]);
    assert_eq!(first["created"], 3, "{first}");
    assert_eq!(first["updated"], 0, "{first}");
    let rejections: Vec<(u64, String)> = first["rejections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lines: Vec<u64> = rejections.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [4, 5, 8, 9], "{rejections:?}");
    assert!(rejections[0].1.contains("email"), "{rejections:?}");
    assert!(rejections[1].1.contains("external_id") || rejections[1].1.contains("email"));
    assert!(rejections[2].1.contains("subscribed"), "{rejections:?}");
    assert!(rejections[3].1.contains("2 cells"), "{rejections:?}");

    let again = import(&db, &project, file.path(), &[]);
    assert_eq!(
        (&again["created"], &again["updated"]),
        (&Value::from(0), &Value::from(3))
    );

    let rows = export(&db, &project);
    assert_eq!(
        rows[0],
        [
            "email",
            "external_id",
            "first_name",
            "last_name",
            "subscribed",
            "properties.code",
            "properties.plan",
            "properties.seats"
        ]
    );
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        rows[1],
        [
            "ada@example.com",
            "u1",
            "Ada",
            "",
            "true",
            "\"42\"",
            "pro",
            "5"
        ]
    );
    assert_eq!(
        rows[2],
        ["bob@example.com", "", "Bob", "", "false", "", "free", ""]
    );
    assert_eq!(
        rows[3],
        [
            "carol@example.com",
            "u4",
            "Carol, the second",
            "",
            "true",
            "",
            "multi\nline",
            "2"
        ]
    );

    // What export writes, import reads: another instance gets the same
    // contacts (typed values included: "42" stays text, 5 a number).
    let (ok, _, err) = keyflow_text(
        &db,
        &[
            "contacts",
            "export",
            "--project",
            &project,
            "--output",
            "/nonexistent/x.csv",
        ],
    );
    assert!(!ok && err.contains("/nonexistent/x.csv.partial"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("contacts.csv");
    let (ok, summary, err) = keyflow(
        &db,
        &[
            "contacts",
            "export",
            "--project",
            &project,
            "--output",
            exported.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(summary["contacts"], 3);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&exported).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "personal data stays owner-only");
    }
    // An unclosed quote would make the rest of a file one cell: the
    // import stops at a row past 1 MiB instead of holding it in memory.
    let mut broken = String::from("email,note\nzed@example.com,\"unclosed\n");
    for i in 0..40_000 {
        broken.push_str(&format!(
            "filler{i}@example.com,some text to make it long\n"
        ));
    }
    let broken = csv_file(&broken);
    let (ok, _, err) = keyflow_text(
        &db,
        &[
            "contacts",
            "import",
            broken.path().to_str().unwrap(),
            "--project",
            &project,
        ],
    );
    assert!(!ok, "a broken file stops the import");
    assert!(err.contains("unclosed quote"), "{err}");

    let other = TestDb::create(backend).await;
    let other_project = initialised(&other);
    let copied = import(&other, &other_project, &exported, &[]);
    assert_eq!(
        (&copied["created"], &copied["rejected"]),
        (&Value::from(3), &Value::from(0))
    );
    assert_eq!(export(&other, &other_project), rows);
}

/// The peak resident memory of `command` while it runs (Linux: VmHWM).
fn peak_rss_kib(mut command: Command) -> (bool, u64, String) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), peak, stdout)
}

/// 100 000 rows (each a new contact with three properties; 10 000 on
/// PostgreSQL) are imported while the process stays within a fixed memory
/// bound: the file is streamed and written 500 rows per transaction, so
/// memory does not grow with its length (a file a tenth as long peaks
/// within a few MiB of it).
async fn a_large_import_stays_within_its_memory_bound(backend: Backend) {
    let db = TestDb::create(backend).await;
    let project = initialised(&db);
    let write_rows = |rows: usize| {
        let mut file = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
        let mut out = std::io::BufWriter::new(file.as_file_mut());
        writeln!(out, "email,external_id,first_name,plan,seats,city").unwrap();
        for i in 0..rows {
            writeln!(
                out,
                "user{i}@example.com,ext-{i},Name {i},pro,{},Paris",
                i % 50
            )
            .unwrap();
        }
        drop(out);
        file
    };
    let run = |file: &tempfile::NamedTempFile| {
        let mut command = Command::new(BIN);
        command
            .arg("--database-url")
            .arg(&db.url)
            .args(["contacts", "import"])
            .arg(file.path())
            .args(["--project", &project, "--json"])
            .env_remove("KEYFLOW_DATABASE_URL");
        let (ok, peak, stdout) = peak_rss_kib(command);
        assert!(ok, "{stdout}");
        let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
        (summary, peak)
    };
    // PostgreSQL takes a round trip per statement: a tenth of the rows
    // there (the reading and batching are the same code).
    let large_rows = if backend == Backend::Sqlite {
        100_000
    } else {
        10_000
    };
    let small_rows = large_rows / 10;
    let small = write_rows(small_rows);
    let (summary, small_peak) = run(&small);
    assert_eq!(summary["created"], small_rows, "{summary}");
    let large = write_rows(large_rows);
    let (summary, large_peak) = run(&large);
    assert_eq!(summary["created"], large_rows - small_rows, "{summary}");
    assert_eq!(summary["updated"], small_rows, "{summary}");
    assert_eq!(summary["rejected"], 0, "{summary}");
    eprintln!("peak RSS: {small_rows} rows {small_peak} KiB, {large_rows} rows {large_peak} KiB");
    assert!(
        large_peak < 160 * 1024,
        "{large_rows} rows took {large_peak} KiB at peak"
    );
    assert!(
        large_peak < small_peak + 24 * 1024,
        "memory grew with the file: {small_peak} KiB for {small_rows} rows, {large_peak} KiB for {large_rows}"
    );
}

backend_tests!(
    import_upserts_rows_and_export_round_trips,
    a_large_import_stays_within_its_memory_bound,
);
