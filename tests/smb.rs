//! SMB shares against a real smbd started by the harness: the same share
//! operations over `smb://` as on a directory, clear and fast errors for a
//! wrong password and a missing share, and the passive copy end to end with
//! the active's log directory exported by Samba and read over SMB.

mod common;

use std::time::{Duration, Instant};

use common::samba::{self, Samba};
use shipper::share::{Share, SmbOptions};

fn opts(s: &Samba) -> SmbOptions {
    SmbOptions {
        password_file: Some(s.password_file()),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

fn exercise(share: &Share) {
    let name = format!("probe-{}.bin", std::process::id());
    assert!(!share.exists(&name).unwrap());
    assert_eq!(share.read(&name, 1 << 20).unwrap(), None);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    share.write_atomic(&name, &data).unwrap();
    assert!(share.exists(&name).unwrap());
    assert_eq!(share.size(&name).unwrap(), Some(data.len() as u64));
    assert!(share.list().unwrap().contains(&name));
    assert_eq!(share.read(&name, 1 << 30).unwrap().unwrap(), data);
    assert_eq!(
        share.read_prefix(&name, 128).unwrap().unwrap(),
        &data[..128]
    );
    assert!(matches!(
        share.read(&name, 10),
        Err(shipper::Error::TooLarge { .. })
    ));
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("copy");
    assert_eq!(share.fetch(&name, &local).unwrap(), Some(data.len() as u64));
    assert_eq!(std::fs::read(&local).unwrap(), data);
    // Replacing an existing file is atomic and whole.
    share.write_atomic(&name, b"second").unwrap();
    assert_eq!(share.read(&name, 100).unwrap().unwrap(), b"second");
    share.remove(&name).unwrap();
    share.remove(&name).unwrap();
    assert!(!share.exists(&name).unwrap());
    assert!(!share.list().unwrap().contains(&name));
}

#[test]
fn a_share_behaves_the_same_over_smb_and_as_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Samba::start(&Samba::share_section("data", dir.path()));
    exercise(&Share::Dir(dir.path().to_path_buf()));
    let smb = Share::open(&s.url("data"), &opts(&s)).unwrap();
    assert!(smb.reachable());
    exercise(&smb);
    // Both see the same files.
    std::fs::write(dir.path().join("local.txt"), b"from the directory").unwrap();
    assert_eq!(
        smb.read("local.txt", 100).unwrap().unwrap(),
        b"from the directory"
    );
}

#[test]
fn a_wrong_password_and_a_missing_share_fail_fast_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let s = Samba::start(&Samba::share_section("data", dir.path()));
    let bad = s.root.path().join("bad-password");
    std::fs::write(&bad, "not-the-password").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = SmbOptions {
        password_file: Some(bad.clone()),
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let share = Share::open(&s.url("data"), &o).unwrap();
    let t = Instant::now();
    let err = share.exists("x").unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains(samba::USER) && err.contains("log on"), "{err}");
    assert!(
        !err.contains("not-the-password"),
        "the password must not appear: {err}"
    );

    let share = Share::open(&s.url("nosuchshare"), &opts(&s)).unwrap();
    let err = share.exists("x").unwrap_err().to_string();
    assert!(err.contains("nosuchshare"), "{err}");

    // A password file others can read is refused.
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Share::open(&s.url("data"), &o).unwrap_err().to_string();
    assert!(err.contains("readable by others"), "{err}");
}
