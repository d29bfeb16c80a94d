//! Reading packages: layouts accepted, and every kind of bad package
//! refused with the entry and the reason.

use std::io::Write;

use holdfast_package::*;

/// A zip of `(name, bytes, mode)` entries, written as given.
fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, mode) in entries {
        let options = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        zip.start_file(*name, options).expect("entry");
        zip.write_all(bytes).expect("write");
    }
    zip.finish().expect("finish").into_inner()
}

#[test]
fn a_safekit_package_is_read_with_its_helpers() {
    let bytes = zip_of(&[
        ("conf/userconfig.xml", b"<safe/>", 0o644),
        ("bin/start_prim", b"#!/bin/sh\n", 0o755),
        ("bin/lib/helper", b"\x7fELF\x00\xff", 0o700),
        ("README", b"hello", 0o644),
    ]);
    let contents = read_zip(&bytes).expect("read");
    assert_eq!(contents.config, Config::SafeKit("<safe/>".into()));
    let names: Vec<&str> = contents.bin.keys().map(String::as_str).collect();
    assert_eq!(names, ["lib/helper", "start_prim"]);
    assert_eq!(contents.bin["lib/helper"].bytes, b"\x7fELF\x00\xff");
    assert_eq!(contents.bin["lib/helper"].mode, 0o700);
    assert_eq!(contents.unused, ["README"]);
    assert!(matches!(
        Package::from_zip(&bytes),
        Err(PackageError::NotNative)
    ));
}

#[test]
fn a_native_package_round_trips_and_a_top_directory_is_removed() {
    let bytes = zip_of(&[
        ("web/module.toml", b"[module]\n", 0o644),
        ("web/bin/start_prim", b"#!/bin/sh\n", 0o755),
    ]);
    let package = Package::from_zip(&bytes).expect("read");
    assert_eq!(package.config, "[module]\n");
    let again = Package::from_zip(&package.to_zip().expect("zip")).expect("read again");
    assert_eq!(again, package);
    assert_eq!(again.bin["start_prim"].mode, 0o755);
}

#[test]
fn a_directory_is_a_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("bin/lib")).unwrap();
    std::fs::create_dir_all(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/userconfig.xml"), "<safe/>").unwrap();
    std::fs::write(dir.path().join("conf/other.xml"), "x").unwrap();
    std::fs::write(dir.path().join("bin/lib/helper"), "x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
    let contents = read_dir(dir.path()).expect("read");
    assert_eq!(contents.config, Config::SafeKit("<safe/>".into()));
    assert!(contents.bin.contains_key("lib/helper"));
    assert_eq!(contents.unused, ["conf/other.xml", "notes.txt"]);

    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("bin/passwd")).unwrap();
    let e = read_dir(dir.path()).expect_err("a link");
    assert!(e.to_string().contains("bin/passwd"), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn bad_packages_name_what_is_wrong() {
    let e = read_zip(b"<safe/> is not a zip").expect_err("not a zip");
    assert!(e.to_string().contains("not a zip archive"), "{e}");

    for (name, why) in [
        ("bin/../../etc/cron.d/x", "leaving the package"),
        ("/etc/passwd", "absolute path"),
        ("bin\\..\\x", "backslash"),
    ] {
        let bytes = zip_of(&[("module.toml", b"", 0o644), (name, b"x", 0o644)]);
        let e = read_zip(&bytes).expect_err(name);
        let message = e.to_string();
        assert!(
            message.contains(&format!("{name:?}")) && message.contains(why),
            "{message}"
        );
    }

    let bytes = zip_of(&[
        ("bin/start_prim", b"x", 0o755),
        ("userconfig.xml", b"", 0o644),
    ]);
    let e = read_zip(&bytes).expect_err("no configuration");
    assert!(e.to_string().contains("conf/userconfig.xml"), "{e}");
    assert!(e.to_string().contains("found: userconfig.xml"), "{e}");

    let bytes = zip_of(&[("conf/userconfig.xml", b"\xff\xfe", 0o644)]);
    let e = read_zip(&bytes).expect_err("not text");
    assert!(e.to_string().contains("not UTF-8"), "{e}");

    let huge = vec![0u8; MAX_PACKAGE_BYTES as usize + 1];
    let e = read_zip(&huge).expect_err("too large");
    assert!(e.to_string().contains("too large"), "{e}");
}

#[test]
fn content_beyond_the_limit_is_refused_before_it_is_read() {
    // Zeros compress well: a small zip declaring more than the limit.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("module.toml", options).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..=(MAX_CONTENT_BYTES >> 20) {
        zip.write_all(&chunk).unwrap();
    }
    let bytes = zip.finish().unwrap().into_inner();
    assert!((bytes.len() as u64) < MAX_PACKAGE_BYTES);
    let e = read_zip(&bytes).expect_err("too large once unpacked");
    assert!(e.to_string().contains("its content"), "{e}");
}
