//! What is not replicated (SafeKit's `<notreplicated>`), on a real FUSE
//! mount replicating over loopback TCP (root, /dev/fuse).

// Shared by several test crates, each using a part of it.
#[allow(dead_code)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Fixture;
use holdfast_replication::Exclusions;

fn exclusions() -> Exclusions {
    Exclusions::new(
        &[PathBuf::from("logs"), PathBuf::from("app/cache")],
        &[r"\.tmp$".into()],
    )
    .unwrap()
}

fn exdev(result: std::io::Result<()>) -> bool {
    result.is_err_and(|e| e.raw_os_error() == Some(libc_exdev()))
}

fn libc_exdev() -> i32 {
    rustix::io::Errno::XDEV.raw_os_error()
}

#[test]
fn excluded_entries_stay_on_the_primary_and_the_rest_is_replicated() {
    let mut fx = Fixture::excluding(exclusions());
    let p = fx.primary.clone();
    let at = |rel: &str| p.join(rel);
    fs::create_dir_all(at("app/cache")).unwrap();
    fs::create_dir(at("logs")).unwrap();
    fs::create_dir(at("dir")).unwrap();
    fs::write(at("app/data.db"), b"replicated").unwrap();
    fs::write(at("app/cache/blob"), b"excluded by path").unwrap();
    fs::write(at("logs/x.log"), b"excluded with its directory").unwrap();
    fs::write(at("a.tmp"), b"excluded by name").unwrap();
    fs::write(at("dir/b.tmp"), b"excluded by name").unwrap();
    fs::write(at("keep.txt"), b"replicated").unwrap();

    // Within each side, everything works as usual.
    fs::rename(at("logs/x.log"), at("logs/y.log")).unwrap();
    fs::rename(at("a.tmp"), at("logs/a.tmp")).unwrap();
    fs::hard_link(at("logs/a.tmp"), at("dir/c.tmp")).unwrap();
    fs::rename(at("keep.txt"), at("kept.txt")).unwrap();
    fs::write(at("dir/b.tmp"), b"rewritten").unwrap();
    fs::remove_file(at("dir/b.tmp")).unwrap();

    // Across the boundary: refused as between two file systems.
    assert!(exdev(fs::rename(at("kept.txt"), at("kept.tmp"))));
    assert!(exdev(fs::rename(at("dir/c.tmp"), at("dir/c.txt"))));
    assert!(exdev(fs::hard_link(at("kept.txt"), at("logs/kept"))));
    // `app` holds the excluded `app/cache`: moving it would carry it along.
    assert!(exdev(fs::rename(at("app"), at("application"))));
    assert_eq!(fs::read(at("kept.txt")).unwrap(), b"replicated");
    // `mv` copies and removes instead, so each side gets what it should.
    let mv = Command::new("mv")
        .arg(at("dir/c.tmp"))
        .arg(at("dir/c.txt"))
        .status()
        .unwrap();
    assert!(mv.success());

    fx.finish().unwrap();
    let s = &fx.secondary;
    for absent in ["logs", "app/cache", "dir/c.tmp", "a.tmp"] {
        assert!(!s.join(absent).exists(), "{absent} reached the secondary");
    }
    assert_eq!(fs::read(s.join("dir/c.txt")).unwrap(), b"excluded by name");
    assert_eq!(fs::read(s.join("app/data.db")).unwrap(), b"replicated");
    let x = exclusions();
    assert_eq!(
        common::replicated_part(&fx.backing(), &x),
        common::replicated_part(s, &x)
    );
    assert!(fx.backing().join(Path::new("app/cache/blob")).exists());
}

/// A directory removed on the primary goes on the secondary too, with
/// the excluded entries only the secondary had in it (left from when it
/// was primary): the stream goes on, no failure.
#[test]
fn a_removed_directory_goes_with_the_secondarys_own_excluded_entries() {
    let mut fx = Fixture::excluding(exclusions());
    fs::create_dir(fx.primary.join("work")).unwrap();
    fs::write(fx.primary.join("work/f"), b"replicated").unwrap();
    fs::write(fx.primary.join("work/mine.tmp"), b"the primary's own").unwrap();
    // Acknowledged on receipt: wait until the secondary applied it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fx.secondary.join("work/f").exists() {
        assert!(
            Instant::now() < deadline,
            "work/f never reached the secondary"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fs::write(fx.secondary.join("work/old.tmp"), b"the secondary's own").unwrap();
    fs::remove_dir_all(fx.primary.join("work")).unwrap();
    fs::write(fx.primary.join("after"), b"still mirrored").unwrap();
    fx.finish().unwrap();
    assert!(!fx.secondary.join("work").exists());
    assert_eq!(
        fs::read(fx.secondary.join("after")).unwrap(),
        b"still mirrored"
    );
}
