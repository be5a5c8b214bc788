//! Each failure has its own error, naming what is at fault: not a
//! "statement refused" for a file with the wrong mode.

use std::os::unix::fs::PermissionsExt;

use shipper::error::SecretProblem;
use shipper::store::{Store, StoreOptions};
use shipper::{Error, Lsn};

fn private(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, text).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

#[test]
fn secret_files_are_refused_by_what_is_wrong_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let open = private(dir.path(), "open.key", "0123456789abcdef0123", 0o644);
    let e = shipper::secret::cluster_key(&open).unwrap_err();
    assert!(
        matches!(&e, Error::SecretFile { problem: SecretProblem::Readable { mode: 0o644 }, path, .. } if *path == open),
        "{e:?}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let short = private(dir.path(), "short.key", "tiny", 0o600);
    let e = shipper::secret::cluster_key(&short).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SecretFile {
                problem: SecretProblem::KeyTooShort { len: 4 },
                ..
            }
        ),
        "{e:?}"
    );
    let e = shipper::secret::read_private(dir.path(), "password file").unwrap_err();
    assert!(
        matches!(
            e,
            Error::SecretFile {
                problem: SecretProblem::NotAFile,
                what: "password file",
                ..
            }
        ),
        "{e:?}"
    );
    let big = private(dir.path(), "big", &"x".repeat(70_000), 0o600);
    let e = shipper::secret::read_private(&big, "password file").unwrap_err();
    assert!(
        matches!(
            e,
            Error::SecretFile {
                problem: SecretProblem::TooLarge { len: 70_000 },
                ..
            }
        ),
        "{e:?}"
    );
    let good = private(dir.path(), "good.key", "0123456789abcdef0123\n", 0o600);
    assert_eq!(
        shipper::secret::cluster_key(&good).unwrap(),
        b"0123456789abcdef0123"
    );
}

#[test]
fn a_bad_share_url_is_named_with_the_form_expected() {
    for (url, why) in [
        ("http://host/share", "not an smb:// URL"),
        ("smb://host", "no share name"),
    ] {
        let e = shipper::smb::SmbUrl::parse(url).unwrap_err();
        assert!(
            matches!(&e, Error::BadShareUrl { url: u, why: w } if u == url && *w == why),
            "{url}: {e:?}"
        );
        assert!(e.to_string().contains("smb://[user@]host"), "{e}");
    }
}

#[test]
fn a_seed_that_does_not_match_its_manifest_names_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path()).unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    s.transaction(|tx| tx.ddl("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)"))
        .unwrap();
    let st = s.state();
    drop(s);
    let snap = dir.path().join("snap.db");
    let lsn = shipper::seed::snapshot(&dir.path().join("store.db"), &snap).unwrap();
    let manifest = shipper::seed::SeedManifest {
        version: Default::default(),
        id: "x".into(),
        database_id: st.database_id.to_string(),
        lsn: shipper::Lsn(lsn.0 + 1),
        hash: format!("{:032x}", st.hash.0),
        size: 0,
    };
    let e = shipper::seed::verify(&snap, &manifest).unwrap_err();
    assert!(
        matches!(&e, Error::SeedMismatch { path, what } if *path == snap && what.contains("manifest says")),
        "{e:?}"
    );
}

#[test]
fn a_store_refuses_to_open_a_passive_copy_and_a_rewind_past_a_schema_change() {
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path()).unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let before = s.state().lsn;
    s.transaction(|tx| tx.ddl("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL)"))
        .unwrap();
    drop(s);
    let e = shipper::rewind::rewind(dir.path(), before).unwrap_err();
    assert!(
        matches!(e, Error::RewindPastSchemaChange { lsn } if lsn == Lsn(before.0 + 1)),
        "{e:?}"
    );
    std::fs::write(dir.path().join(shipper::store::PASSIVE_MARKER), "{}").unwrap();
    let e = Store::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::PassiveCopy { path, .. } if path == dir.path()),
        "{e:?}"
    );
}
