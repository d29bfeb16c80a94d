//! The same syscalls on a plain directory and on a mirrored one must give
//! the same results, and the secondary's tree must equal the primary's.
//! Runs real FUSE mounts (root, /dev/fuse).

// Shared by several test crates, each using a part of it.
#[allow(dead_code)]
mod common;

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::Fixture;
use holdfast_replication::{
    Ack, AckMode, AckSender, Change, Durability, Mirror, MountOptions, ReplicationError,
    Replicator, TailLimits,
};
use rustix::fs::{
    self as rfs, AtFlags, FallocateFlags, FileType, Mode, RenameFlags, Timespec, Timestamps,
    XattrFlags, CWD,
};

/// One line of a case's log: what a call returned (errno on failure).
fn log<T: Debug>(out: &mut Vec<String>, what: &str, result: std::io::Result<T>) {
    out.push(match result {
        Ok(v) => format!("{what}: Ok({v:?})"),
        Err(e) => format!(
            "{what}: Err({:?})",
            e.raw_os_error().map(rustix::io::Errno::from_raw_os_error)
        ),
    });
}

/// What a stat shows that does not depend on when or where the case ran.
fn stat(path: &Path) -> std::io::Result<String> {
    let md = fs::symlink_metadata(path)?;
    let size = if md.is_dir() { 0 } else { md.size() };
    Ok(format!(
        "mode={:o} uid={} gid={} nlink={} size={size} rdev={}",
        md.mode(),
        md.uid(),
        md.gid(),
        md.nlink(),
        md.rdev()
    ))
}

fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

fn errno<T>(r: rustix::io::Result<T>) -> std::io::Result<T> {
    r.map_err(Into::into)
}

type Case = fn(&Path, &mut Vec<String>);

const CASES: &[(&str, Case)] = &[
    ("create_write_read", |d, o| {
        let p = d.join("f");
        log(o, "write", fs::write(&p, b"hello world"));
        log(o, "read", fs::read(&p));
        log(o, "stat", stat(&p));
        log(
            o,
            "create_new existing",
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map(drop),
        );
        log(o, "open missing", File::open(d.join("missing")).map(drop));
        log(
            o,
            "create in missing dir",
            File::create(d.join("no/such")).map(drop),
        );
    }),
    ("pwrite_sparse_and_overwrite", |d, o| {
        let p = d.join("f");
        let f = File::create(&p).unwrap();
        log(o, "write_at 1M", f.write_at(b"tail", 1 << 20));
        log(o, "write_at 0", f.write_at(b"head", 0));
        log(o, "overwrite", f.write_at(b"HE", 0));
        drop(f);
        log(o, "stat", stat(&p));
        let data = fs::read(&p).unwrap();
        log(o, "head", Ok(data[..8].to_vec()));
        log(o, "tail", Ok(data[data.len() - 4..].to_vec()));
    }),
    ("append", |d, o| {
        let p = d.join("f");
        fs::write(&p, b"one\n").unwrap();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        log(o, "append", f.write_all(b"two\n"));
        log(o, "append", f.write_all(b"three\n"));
        drop(f);
        log(o, "read", fs::read_to_string(&p));
    }),
    ("read_write_seek", |d, o| {
        let p = d.join("f");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        log(o, "write", f.write_all(&[7u8; 300_000]));
        log(o, "seek", f.seek(SeekFrom::Start(1000)));
        let mut buf = vec![0u8; 10];
        log(o, "read", f.read_exact(&mut buf).map(|()| buf.clone()));
        log(o, "sync", f.sync_all());
        log(o, "stat", stat(&p));
    }),
    ("truncate", |d, o| {
        let p = d.join("f");
        fs::write(&p, vec![1u8; 10_000]).unwrap();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        log(o, "shrink", f.set_len(100));
        log(o, "grow", f.set_len(50_000));
        drop(f);
        log(o, "stat", stat(&p));
        log(
            o,
            "O_TRUNC",
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .map(drop),
        );
        log(o, "stat", stat(&p));
        log(
            o,
            "truncate by path",
            errno(
                rfs::open(&p, rfs::OFlags::WRONLY, Mode::empty())
                    .and_then(|f| rfs::ftruncate(f, 7)),
            ),
        );
        log(o, "stat", stat(&p));
    }),
    ("chmod", |d, o| {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        for mode in [0o640, 0o4755, 0o2711, 0o1777, 0o000] {
            log(
                o,
                "chmod",
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)),
            );
            log(o, "stat", stat(&p));
        }
        fs::create_dir(d.join("dir")).unwrap();
        log(
            o,
            "chmod dir",
            fs::set_permissions(d.join("dir"), fs::Permissions::from_mode(0o700)),
        );
        log(o, "stat", stat(&d.join("dir")));
        log(
            o,
            "fchmod dir fd",
            File::open(d.join("dir"))
                .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o711))),
        );
        log(o, "stat", stat(&d.join("dir")));
    }),
    ("chown", |d, o| {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o6755)).unwrap();
        log(
            o,
            "chown",
            std::os::unix::fs::chown(&p, Some(1234), Some(5678)),
        );
        // chown clears set-user-ID and set-group-ID bits.
        log(o, "stat", stat(&p));
        log(
            o,
            "chgrp only",
            std::os::unix::fs::chown(&p, None, Some(42)),
        );
        log(o, "stat", stat(&p));
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        log(
            o,
            "lchown",
            std::os::unix::fs::lchown(d.join("l"), Some(7), Some(8)),
        );
        log(o, "stat link", stat(&d.join("l")));
        log(o, "stat target", stat(&p));
    }),
    ("utimens", |d, o| {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_000_000, 123_456_789);
        let f = File::options().write(true).open(&p).unwrap();
        log(o, "set mtime", f.set_modified(t));
        log(
            o,
            "mtime",
            fs::metadata(&p).map(|m| (m.mtime(), m.mtime_nsec())),
        );
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 5,
                tv_nsec: 6,
            },
            last_modification: Timespec {
                tv_sec: 0,
                tv_nsec: rfs::UTIME_NOW,
            },
        };
        log(
            o,
            "utimensat now",
            errno(rfs::utimensat(CWD, &p, &times, rfs::AtFlags::empty())),
        );
        log(
            o,
            "atime",
            fs::metadata(&p).map(|m| (m.atime(), m.atime_nsec())),
        );
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        let old = Timestamps {
            last_access: Timespec {
                tv_sec: 9,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: 10,
                tv_nsec: 11,
            },
        };
        log(
            o,
            "lutimes",
            errno(rfs::utimensat(
                CWD,
                d.join("l"),
                &old,
                rfs::AtFlags::SYMLINK_NOFOLLOW,
            )),
        );
        log(
            o,
            "link mtime",
            fs::symlink_metadata(d.join("l")).map(|m| (m.mtime(), m.mtime_nsec())),
        );
    }),
    ("mkdir_rmdir", |d, o| {
        log(o, "mkdir", fs::create_dir(d.join("a")));
        log(o, "mkdir existing", fs::create_dir(d.join("a")));
        log(o, "mkdir -p", fs::create_dir_all(d.join("a/b/c")));
        log(o, "rmdir non-empty", fs::remove_dir(d.join("a")));
        log(o, "rmdir missing", fs::remove_dir(d.join("zz")));
        log(o, "rmdir leaf", fs::remove_dir(d.join("a/b/c")));
        log(
            o,
            "mkdir mode",
            fs::DirBuilder::new().mode(0o750).create(d.join("m")),
        );
        log(o, "stat", stat(&d.join("m")));
        fs::set_permissions(d.join("m"), fs::Permissions::from_mode(0o2775)).unwrap();
        std::os::unix::fs::chown(d.join("m"), None, Some(99)).unwrap();
        fs::set_permissions(d.join("m"), fs::Permissions::from_mode(0o2775)).unwrap();
        // A set-group-ID directory passes its group (and the bit, to directories).
        log(o, "mkdir in setgid", fs::create_dir(d.join("m/sub")));
        log(o, "stat", stat(&d.join("m/sub")));
        log(o, "file in setgid", fs::write(d.join("m/file"), b""));
        log(o, "stat", stat(&d.join("m/file")));
        log(o, "list", list(d));
    }),
    ("unlink", |d, o| {
        fs::write(d.join("f"), b"x").unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        log(o, "unlink", fs::remove_file(d.join("f")));
        log(o, "unlink again", fs::remove_file(d.join("f")));
        log(o, "unlink dir", fs::remove_file(d.join("dir")));
        log(o, "list", list(d));
    }),
    ("rename", |d, o| {
        fs::write(d.join("a"), b"a").unwrap();
        fs::write(d.join("b"), b"b").unwrap();
        log(o, "over file", fs::rename(d.join("a"), d.join("b")));
        log(o, "read", fs::read(d.join("b")));
        fs::create_dir_all(d.join("d1/sub")).unwrap();
        fs::write(d.join("d1/sub/f"), b"deep").unwrap();
        log(o, "dir", fs::rename(d.join("d1"), d.join("d2")));
        log(o, "old child", fs::read(d.join("d1/sub/f")));
        log(o, "new child", fs::read(d.join("d2/sub/f")));
        // The moved child is still known at its new path: writes follow it.
        log(o, "write moved", fs::write(d.join("d2/sub/f"), b"moved"));
        log(
            o,
            "into subdir",
            fs::rename(d.join("b"), d.join("d2/sub/b")),
        );
        log(
            o,
            "dir over non-empty",
            fs::rename(d.join("d2/sub"), d.join("d2")),
        );
        fs::create_dir(d.join("empty")).unwrap();
        log(
            o,
            "dir over empty dir",
            fs::rename(d.join("d2"), d.join("empty")),
        );
        log(
            o,
            "file over dir",
            fs::rename(d.join("empty/sub/f"), d.join("empty/sub")),
        );
        log(o, "missing", fs::rename(d.join("nope"), d.join("x")));
        log(o, "list", list(d));
        log(o, "list", list(&d.join("empty/sub")));
    }),
    ("rename_noreplace", |d, o| {
        fs::write(d.join("a"), b"a").unwrap();
        fs::write(d.join("b"), b"b").unwrap();
        log(
            o,
            "existing",
            errno(rfs::renameat_with(
                CWD,
                d.join("a"),
                CWD,
                d.join("b"),
                RenameFlags::NOREPLACE,
            )),
        );
        log(
            o,
            "absent",
            errno(rfs::renameat_with(
                CWD,
                d.join("a"),
                CWD,
                d.join("c"),
                RenameFlags::NOREPLACE,
            )),
        );
        log(o, "list", list(d));
    }),
    ("rename_exchange", |d, o| {
        fs::write(d.join("a"), b"a").unwrap();
        fs::write(d.join("b"), b"b").unwrap();
        fs::create_dir(d.join("dir")).unwrap();
        fs::write(d.join("dir/inner"), b"i").unwrap();
        log(
            o,
            "files",
            errno(rfs::renameat_with(
                CWD,
                d.join("a"),
                CWD,
                d.join("b"),
                RenameFlags::EXCHANGE,
            )),
        );
        log(o, "a", fs::read(d.join("a")));
        log(o, "b", fs::read(d.join("b")));
        log(
            o,
            "file<->dir",
            errno(rfs::renameat_with(
                CWD,
                d.join("a"),
                CWD,
                d.join("dir"),
                RenameFlags::EXCHANGE,
            )),
        );
        log(o, "inner via a", fs::read(d.join("a/inner")));
        log(o, "write inner", fs::write(d.join("a/inner"), b"j"));
        log(o, "dir is file", fs::read(d.join("dir")));
        log(
            o,
            "missing",
            errno(rfs::renameat_with(
                CWD,
                d.join("a"),
                CWD,
                d.join("zz"),
                RenameFlags::EXCHANGE,
            )),
        );
    }),
    ("hard_links", |d, o| {
        fs::write(d.join("f"), b"one").unwrap();
        log(o, "link", fs::hard_link(d.join("f"), d.join("g")));
        log(o, "stat", stat(&d.join("g")));
        log(o, "write via g", fs::write(d.join("g"), b"two"));
        log(o, "read via f", fs::read(d.join("f")));
        log(
            o,
            "same inode",
            Ok(fs::metadata(d.join("f")).unwrap().ino()
                == fs::metadata(d.join("g")).unwrap().ino()),
        );
        log(o, "unlink f", fs::remove_file(d.join("f")));
        log(o, "write via g", fs::write(d.join("g"), b"three"));
        log(o, "stat", stat(&d.join("g")));
        log(o, "link existing", fs::hard_link(d.join("g"), d.join("g")));
        fs::create_dir(d.join("dir")).unwrap();
        log(o, "link dir", fs::hard_link(d.join("dir"), d.join("dir2")));
    }),
    ("symlinks", |d, o| {
        log(
            o,
            "relative",
            std::os::unix::fs::symlink("target", d.join("rel")),
        );
        log(
            o,
            "absolute",
            std::os::unix::fs::symlink("/etc/hostname", d.join("abs")),
        );
        log(o, "readlink", fs::read_link(d.join("rel")));
        log(o, "readlink abs", fs::read_link(d.join("abs")));
        log(o, "dangling read", fs::read(d.join("rel")));
        log(o, "write through", fs::write(d.join("rel"), b"via link"));
        log(o, "target", fs::read(d.join("target")));
        log(o, "stat", stat(&d.join("rel")));
        log(
            o,
            "existing",
            std::os::unix::fs::symlink("x", d.join("rel")),
        );
        log(o, "readlink on file", fs::read_link(d.join("target")));
    }),
    ("mknod", |d, o| {
        log(
            o,
            "fifo",
            errno(rfs::mknodat(
                CWD,
                d.join("fifo"),
                FileType::Fifo,
                Mode::from_raw_mode(0o640),
                0,
            )),
        );
        log(
            o,
            "char",
            errno(rfs::mknodat(
                CWD,
                d.join("null"),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rfs::makedev(1, 3),
            )),
        );
        log(
            o,
            "socket",
            errno(rfs::mknodat(
                CWD,
                d.join("sock"),
                FileType::Socket,
                Mode::from_raw_mode(0o600),
                0,
            )),
        );
        log(
            o,
            "regular",
            errno(rfs::mknodat(
                CWD,
                d.join("reg"),
                FileType::RegularFile,
                Mode::from_raw_mode(0o644),
                0,
            )),
        );
        for n in ["fifo", "null", "sock", "reg"] {
            log(o, n, stat(&d.join(n)));
        }
    }),
    ("fallocate", |d, o| {
        let p = d.join("f");
        let f = File::create(&p).unwrap();
        log(
            o,
            "allocate",
            errno(rfs::fallocate(&f, FallocateFlags::empty(), 0, 1 << 16)),
        );
        log(o, "stat", stat(&p));
        log(
            o,
            "keep size",
            errno(rfs::fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 1 << 20)),
        );
        log(o, "stat", stat(&p));
        f.write_at(&[9u8; 8192], 0).unwrap();
        log(
            o,
            "punch",
            errno(rfs::fallocate(
                &f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                4096,
            )),
        );
        drop(f);
        let data = fs::read(&p).unwrap();
        log(o, "punched", Ok((data[0], data[4095], data[4096])));
    }),
    ("xattrs", |d, o| {
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        log(
            o,
            "set",
            errno(rfs::setxattr(&p, "user.a", b"1", XattrFlags::CREATE)),
        );
        log(
            o,
            "create existing",
            errno(rfs::setxattr(&p, "user.a", b"2", XattrFlags::CREATE)),
        );
        log(
            o,
            "replace missing",
            errno(rfs::setxattr(&p, "user.b", b"2", XattrFlags::REPLACE)),
        );
        log(
            o,
            "set b",
            errno(rfs::setxattr(&p, "user.b", b"", XattrFlags::empty())),
        );
        log(
            o,
            "replace",
            errno(rfs::setxattr(&p, "user.a", b"one", XattrFlags::REPLACE)),
        );
        let mut buf = [0u8; 16];
        log(
            o,
            "get",
            errno(rfs::getxattr(&p, "user.a", &mut buf[..])).map(|n| buf[..n].to_vec()),
        );
        log(o, "size query", errno(rfs::getxattr_query(&p, "user.a")));
        log(
            o,
            "too small",
            errno(rfs::getxattr(&p, "user.a", &mut [0u8; 1][..])),
        );
        log(
            o,
            "get missing",
            errno(rfs::getxattr(&p, "user.zz", &mut buf[..])),
        );
        let mut names = [0u8; 64];
        log(
            o,
            "list",
            errno(rfs::listxattr(&p, &mut names[..])).map(|n| {
                let mut v: Vec<_> = names[..n]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.to_vec())
                    .collect();
                v.sort();
                v
            }),
        );
        log(o, "remove", errno(rfs::removexattr(&p, "user.b")));
        log(o, "remove missing", errno(rfs::removexattr(&p, "user.b")));
        fs::create_dir(d.join("dir")).unwrap();
        log(
            o,
            "on dir",
            errno(rfs::setxattr(
                d.join("dir"),
                "user.d",
                b"dir",
                XattrFlags::empty(),
            )),
        );
        std::os::unix::fs::symlink("f", d.join("l")).unwrap();
        log(
            o,
            "on symlink",
            errno(rfs::lsetxattr(
                d.join("l"),
                "user.l",
                b"l",
                XattrFlags::empty(),
            )),
        );
    }),
    ("statfs_access", |d, o| {
        fs::write(d.join("f"), b"x").unwrap();
        log(o, "statvfs", errno(rfs::statvfs(d)).map(|s| s.f_namemax));
        log(
            o,
            "access rw",
            errno(rfs::access(
                d.join("f"),
                rfs::Access::READ_OK | rfs::Access::WRITE_OK,
            )),
        );
        log(
            o,
            "access missing",
            errno(rfs::access(d.join("zz"), rfs::Access::EXISTS)),
        );
    }),
    ("readdir_many", |d, o| {
        for i in 0..300 {
            fs::write(d.join(format!("file-{i:03}-with-a-longer-name")), [i as u8]).unwrap();
        }
        log(o, "count", list(d).map(|l| l.len()));
        log(o, "first", list(d).map(|l| l[0].clone()));
        for i in (0..300).step_by(2) {
            fs::remove_file(d.join(format!("file-{i:03}-with-a-longer-name"))).unwrap();
        }
        log(o, "after removal", list(d).map(|l| l.len()));
    }),
    ("open_unlink_write", |d, o| {
        let p = d.join("tmp");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        log(o, "unlink open file", fs::remove_file(&p));
        log(o, "write orphan", f.write_all(b"gone"));
        log(o, "truncate orphan", f.set_len(2));
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        log(
            o,
            "read orphan",
            f.read_to_string(&mut s).map(|_| s.clone()),
        );
        log(o, "list", list(d));
    }),
    ("writes_by_another_user_drop_privileges", |d, o| {
        use std::os::unix::process::CommandExt;
        let p = d.join("f");
        fs::write(&p, b"x").unwrap();
        // A capability set as file capabilities are (VFS_CAP_REVISION_2,
        // effective, CAP_NET_BIND_SERVICE permitted).
        let mut caps = Vec::new();
        for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            caps.extend_from_slice(&word.to_le_bytes());
        }
        // `script` run by `nobody` with the file as its standard output
        // (opened here, so no directory needs to be reachable by it).
        let by_nobody = |o: &mut Vec<String>, what: &str, mode: u32, group: u32, script: &str| {
            std::os::unix::fs::chown(&p, None, Some(group)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            rfs::setxattr(&p, "security.capability", &caps, XattrFlags::empty()).unwrap();
            let out = OpenOptions::new().append(true).open(&p).unwrap();
            let status = std::process::Command::new("sh")
                .args(["-c", script])
                .uid(65534)
                .gid(65534)
                .stdout(out)
                .status()
                .map(|s| s.success());
            log(o, what, status);
            // The mode alone, which the kernel may answer from its cache.
            log(
                o,
                "statx mode",
                errno(rfs::statx(
                    CWD,
                    &p,
                    rfs::AtFlags::empty(),
                    rfs::StatxFlags::MODE,
                ))
                .map(|s| format!("{:o}", s.stx_mode)),
            );
            log(o, "stat", stat(&p));
            log(
                o,
                "capabilities",
                errno(rfs::getxattr_query(&p, "security.capability")),
            );
        };
        by_nobody(o, "write, capabilities only", 0o777, 0, "printf w");
        by_nobody(o, "write setuid", 0o6777, 0, "printf w");
        by_nobody(o, "write setgid, not in group", 0o2767, 0, "printf w");
        by_nobody(o, "write setgid, in group", 0o2767, 65534, "printf w");
        by_nobody(o, "truncate", 0o6777, 0, "truncate -s 1 /dev/stdout");
        by_nobody(o, "O_TRUNC", 0o6777, 0, ": > /dev/stdout");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o6777)).unwrap();
        log(o, "write by root", fs::write(&p, b"root"));
        log(o, "stat", stat(&p));
    }),
    ("cached_data_follows_every_change", |d, o| {
        // Each read after the first may come from the kernel's cache.
        let p = d.join("f");
        fs::write(&p, b"one two three").unwrap();
        log(o, "read", fs::read(&p));
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        log(o, "overwrite", f.write_at(b"ONE", 0));
        drop(f);
        log(o, "read", fs::read(&p));
        log(
            o,
            "truncate",
            File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_len(3)),
        );
        log(o, "read", fs::read(&p));
        fs::hard_link(&p, d.join("g")).unwrap();
        log(o, "write other name", fs::write(d.join("g"), b"via g"));
        log(o, "read", fs::read(&p));
        let f = File::options().write(true).open(&p).unwrap();
        log(
            o,
            "punch",
            errno(rfs::fallocate(
                &f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                2,
            )),
        );
        drop(f);
        log(o, "read", fs::read(&p));
    }),
    // A program's temporary file: every call through a descriptor works
    // as on a local directory once the file's last name is gone.
    ("unlinked_open_file", |d, o| {
        let p = d.join("f");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.write_all_at(b"before unlink", 0).unwrap();
        fs::remove_file(&p).unwrap();
        let fstat = |f: &File| {
            f.metadata().map(|md| {
                format!(
                    "mode={:o} nlink={} size={} mtime={}",
                    md.mode(),
                    md.nlink(),
                    md.size(),
                    md.mtime()
                )
            })
        };
        let owner = f.metadata().unwrap();
        log(
            o,
            "fstat",
            fstat(&f).map(|s| s.split(" mtime").next().unwrap().to_string()),
        );
        log(o, "write", f.write_at(b"after", 100));
        let mut buf = [0u8; 6];
        log(
            o,
            "pread",
            f.read_at(&mut buf, 0).map(|n| buf[..n].to_vec()),
        );
        log(
            o,
            "fchmod",
            errno(rfs::fchmod(&f, Mode::from_raw_mode(0o600))),
        );
        log(
            o,
            "fchown",
            errno(rfs::fchown(
                &f,
                Some(rfs::Uid::from_raw(owner.uid())),
                Some(rfs::Gid::from_raw(owner.gid())),
            )),
        );
        let at = |sec| Timespec {
            tv_sec: sec,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: at(1_000_000),
            last_modification: at(2_000_000),
        };
        log(o, "futimens", errno(rfs::futimens(&f, &times)));
        log(o, "fstat", fstat(&f));
        log(
            o,
            "fsetxattr",
            errno(rfs::fsetxattr(&f, "user.k", b"v", XattrFlags::CREATE)),
        );
        let mut value = [0u8; 8];
        log(
            o,
            "fgetxattr",
            errno(rfs::fgetxattr(&f, "user.k", &mut value[..])).map(|n| value[..n].to_vec()),
        );
        let mut names = [0u8; 64];
        log(
            o,
            "flistxattr",
            errno(rfs::flistxattr(&f, &mut names[..])).map(|n| names[..n].to_vec()),
        );
        log(o, "fremovexattr", errno(rfs::fremovexattr(&f, "user.k")));
        log(
            o,
            "fallocate",
            errno(rfs::fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 8192)),
        );
        log(o, "ftruncate", f.set_len(50));
        log(o, "fstatfs", errno(rfs::fstatfs(&f)).map(drop));
        log(o, "fsync", f.sync_all());
        log(o, "fdatasync", f.sync_data());
        log(o, "fstat", fstat(&f));
        log(
            o,
            "linkat by descriptor",
            errno(rfs::linkat(&f, "", CWD, d.join("g"), AtFlags::EMPTY_PATH)),
        );
        log(o, "list", list(d));
    }),
    ("fsync", |d, o| {
        let mut f = File::create(d.join("f")).unwrap();
        log(o, "write", f.write_all(b"durable"));
        log(o, "fsync", f.sync_all());
        log(o, "fdatasync", f.sync_data());
        log(o, "fsync dir", File::open(d).and_then(|d| d.sync_all()));
    }),
];

#[test]
fn posix_suite_matches_plain_directory_and_replicates() {
    for (name, case) in CASES {
        let plain = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        case(plain.path(), &mut expected);

        let mut fixture = Fixture::new(AckMode::Durable);
        let mut got = Vec::new();
        case(&fixture.primary, &mut got);
        assert_eq!(
            expected, got,
            "case {name}: results differ from a plain directory"
        );
        // Durable: every change was applied on the secondary before its ack.
        fixture.assert_replicated();
        fixture
            .finish()
            .unwrap_or_else(|e| panic!("case {name}: receiver: {e}"));
        eprintln!("case {name}: ok");
    }
}

/// What must never be stale through the mount, whatever the kernel caches.
fn metadata(path: &Path) -> (u64, u64, u32, i64, i64, i64, i64) {
    let md = fs::symlink_metadata(path).unwrap();
    (
        md.size(),
        md.nlink(),
        md.mode(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    )
}

#[test]
fn metadata_through_the_mount_is_never_stale() {
    let mut fixture = Fixture::new(AckMode::Receipt);
    let (mount, real) = (fixture.primary.clone(), fixture.backing());
    // Every name is stat'ed (so the kernel caches it) before each change,
    // and compared with the real file after it.
    let names = ["a", "b", "sub", "sub/c", ""];
    let check = |step: &str| {
        for name in names {
            let (m, r) = (mount.join(name), real.join(name));
            match fs::symlink_metadata(&r) {
                Ok(_) => assert_eq!(
                    metadata(&m),
                    metadata(&r),
                    "after {step}: {name:?} through the mount"
                ),
                Err(_) => assert!(
                    fs::symlink_metadata(&m).is_err(),
                    "after {step}: {name:?} still seen through the mount"
                ),
            }
        }
    };
    let step = |what: &str, change: &dyn Fn()| {
        check(&format!("before {what}"));
        change();
        check(what);
    };
    let early = File::create(mount.join("a")).unwrap();
    step("write", &|| {
        fs::write(mount.join("a"), vec![1u8; 100]).unwrap()
    });
    step("hard link", &|| {
        fs::hard_link(mount.join("a"), mount.join("b")).unwrap()
    });
    step("append through the other name", &|| {
        let mut f = OpenOptions::new()
            .append(true)
            .open(mount.join("b"))
            .unwrap();
        f.write_all(&[2u8; 50]).unwrap();
    });
    step("write through a descriptor opened earlier", &|| {
        early.write_all_at(&[3u8; 10], 4000).unwrap()
    });
    step("truncate through the other name", &|| {
        OpenOptions::new()
            .write(true)
            .open(mount.join("b"))
            .unwrap()
            .set_len(7)
            .unwrap()
    });
    step("chmod", &|| {
        fs::set_permissions(mount.join("a"), fs::Permissions::from_mode(0o600)).unwrap()
    });
    step("times", &|| {
        File::options()
            .write(true)
            .open(mount.join("b"))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap()
    });
    step("mkdir", &|| fs::create_dir(mount.join("sub")).unwrap());
    step("rename into a subdirectory", &|| {
        fs::rename(mount.join("b"), mount.join("sub/c")).unwrap()
    });
    step("unlink of one name", &|| {
        fs::remove_file(mount.join("a")).unwrap()
    });
    step("write through the last name", &|| {
        fs::write(mount.join("sub/c"), b"short").unwrap()
    });
    step("hard link replaced by rename", &|| {
        fs::hard_link(mount.join("sub/c"), mount.join("a")).unwrap();
        fs::write(mount.join("b"), b"other").unwrap();
        fs::rename(mount.join("b"), mount.join("a")).unwrap();
    });
    step("rmdir", &|| {
        fs::remove_file(mount.join("sub/c")).unwrap();
        fs::remove_dir(mount.join("sub")).unwrap();
    });
    drop(early);
    fixture.finish().unwrap();
}

/// Write-only opens bypass the kernel's page cache (`FOPEN_DIRECT_IO`):
/// what they write must still show through a descriptor that cached the
/// file's data, and through the secondary.
#[test]
fn data_cached_by_a_reader_is_never_stale_after_a_write_only_open_writes() {
    let mut fixture = Fixture::new(AckMode::Receipt);
    let (mount, real) = (fixture.primary.clone(), fixture.backing());
    let path = mount.join("f");
    fs::write(&path, vec![b'a'; 8192]).unwrap();
    let reader = File::open(&path).unwrap();
    let cached = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let n = reader.read_at(&mut buf, at).unwrap();
        buf.truncate(n);
        buf
    };
    assert_eq!(cached(0, 8192), vec![b'a'; 8192]);
    let writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(b"bbbb", 100).unwrap();
    writer.write_all_at(b"cccc", 8190).unwrap();
    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    appender.write_all(b"dd").unwrap();
    let whole = fs::read(real.join("f")).unwrap();
    assert_eq!(whole.len(), 8196);
    assert_eq!(&whole[100..104], b"bbbb");
    assert_eq!(&whole[8190..], b"ccccdd");
    assert_eq!(cached(0, 16384), whole, "through the reader that cached it");
    assert_eq!(reader.metadata().unwrap().len(), 8196);
    drop((reader, writer, appender));
    fixture.finish().unwrap();
}

#[test]
fn concurrent_appending_writers_are_all_replicated() {
    const THREADS: usize = 8;
    const LINES: usize = 40;
    let mut fixture = Fixture::new(AckMode::Receipt);
    let path = fixture.primary.join("log");
    File::create(&path).unwrap();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let path = &path;
            s.spawn(move || {
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                for i in 0..LINES {
                    f.write_all(format!("thread {t} line {i}\n").as_bytes())
                        .unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
    });
    let check = |text: String, side: &str| {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        let mut want: Vec<String> = (0..THREADS)
            .flat_map(|t| (0..LINES).map(move |i| format!("thread {t} line {i}")))
            .collect();
        want.sort();
        assert_eq!(lines, want, "{side}: every acknowledged line, once");
    };
    check(fs::read_to_string(&path).unwrap(), "mount");
    let secondary = fixture.secondary.join("log");
    let backing = fixture.backing().join("log");
    check(fs::read_to_string(&backing).unwrap(), "primary");
    // Receipt mode acknowledges before applying: wait for the session end.
    let primary = fs::read(&backing).unwrap();
    fixture.finish().unwrap();
    assert_eq!(
        fs::read(&secondary).unwrap(),
        primary,
        "byte-identical on the secondary"
    );
}

#[test]
fn a_large_write_cut_short_by_a_full_disk_is_replicated_as_far_as_it_went() {
    let mut fixture = Fixture::on_small_disk(AckMode::Receipt, "600k");
    let mut f = File::create(fixture.primary.join("big")).unwrap();
    // One write(2) of 1 MiB: several chunks, the disk fills during one.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let written = f.write(&data).unwrap();
    assert!(
        written > 0 && written < data.len(),
        "a short write, not an error: {written}"
    );
    assert_eq!(
        f.metadata().unwrap().len(),
        written as u64,
        "the file holds what was reported written"
    );
    drop(f);
    fixture.finish().unwrap();
    // Everything written on the primary reached the secondary.
    fixture.assert_replicated();
    assert_eq!(
        fs::read(fixture.secondary.join("big")).unwrap(),
        &data[..written]
    );
}

#[test]
fn a_change_held_for_the_secondary_does_not_hold_other_requests() {
    use holdfast_replication::{ChangeLog, Link, TrackingConfig};
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("primary");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("other"), b"readable").unwrap();
    let backing = File::open(&dir).unwrap();
    let (log, _) = ChangeLog::open(&tmp.path().join("state"), TrackingConfig::default()).unwrap();
    let link = Link::tracking(Arc::new(log));
    let guard = Mirror::mount(&dir, Arc::new(link.clone())).unwrap();
    // A write (a create would hold its directory in the kernel meanwhile).
    let mut file = File::create(dir.join("held")).unwrap();
    {
        let tree = guard.tree();
        let _order = tree.lock();
        // As with `on_secondary_failure = "block"`: changes wait for a resync.
        link.hold();
    }
    // Returns once applied; its fsync waits for the secondary.
    let held = std::thread::spawn(move || file.write_all(b"held").and_then(|()| file.sync_data()));
    let written =
        std::path::PathBuf::from(format!("/proc/self/fd/{}", backing.as_raw_fd())).join("held");
    let applied = || fs::read(&written).is_ok_and(|d| d == b"held");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !applied() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(applied(), "the write was applied, then held");
    // Another request meanwhile: answered, not queued behind the held one.
    let (tx, rx) = std::sync::mpsc::channel();
    let other = dir.join("other");
    std::thread::spawn(move || tx.send(fs::read(other)));
    let read = rx.recv_timeout(Duration::from_secs(5));
    let still_held = !held.is_finished();
    // Released (the link tracks again) before asserting, so nothing hangs.
    link.track();
    assert!(held.join().unwrap().is_ok(), "released, the write returns");
    assert!(still_held, "the write was held until the release");
    assert_eq!(
        read.expect("a read answered while a change is held")
            .unwrap(),
        b"readable"
    );
    guard.unmount().unwrap();
}

#[test]
fn writes_after_unlink_reach_a_link_never_looked_up() {
    let mut fixture = Fixture::new(AckMode::Durable);
    fs::write(fixture.primary.join("f"), b"before").unwrap();
    // A hard link both copies had before the mirror was mounted.
    fs::hard_link(fixture.backing().join("f"), fixture.backing().join("g")).unwrap();
    fs::hard_link(fixture.secondary.join("f"), fixture.secondary.join("g")).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .open(fixture.primary.join("f"))
        .unwrap();
    fs::remove_file(fixture.primary.join("f")).unwrap();
    f.write_all(b"AFTER").unwrap();
    drop(f);
    assert_eq!(fs::read(fixture.primary.join("g")).unwrap(), b"AFTERe");
    fixture.assert_replicated();
    fixture.finish().unwrap();
}

#[test]
fn failed_replication_is_an_io_error_for_a_call_that_waits() {
    #[derive(Debug)]
    struct Failing;
    impl Replicator for Failing {
        fn submit(&self, _: &Change) -> Result<Ack, ReplicationError> {
            Ok(Ack::done(Err(ReplicationError::Disconnected(
                "test".into(),
            ))))
        }
    }
    let eio = Some(rustix::io::Errno::IO.raw_os_error());
    for durability in [Durability::EveryCall, Durability::SyncCalls] {
        let tmp = tempfile::tempdir().unwrap();
        let options = MountOptions {
            durability,
            ..MountOptions::default()
        };
        let guard = Mirror::mount_with(tmp.path(), Arc::new(Failing), options).unwrap();
        let made = fs::create_dir(tmp.path().join("d"));
        if durability == Durability::EveryCall {
            assert_eq!(made.unwrap_err().raw_os_error(), eio);
        } else {
            // Applied and queued: only a call promising durability learns.
            made.unwrap();
            let dir = File::open(tmp.path()).unwrap();
            assert_eq!(dir.sync_all().unwrap_err().raw_os_error(), eio);
            let mut f = File::create(tmp.path().join("f")).unwrap();
            f.write_all(b"x").unwrap();
            assert_eq!(f.sync_data().unwrap_err().raw_os_error(), eio);
        }
        // Reads do not need the secondary.
        assert!(list(tmp.path()).is_ok());
        guard.unmount().unwrap();
        let mounted = fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounted.contains(tmp.path().to_str().unwrap()));
    }
}

#[test]
fn requests_go_on_while_a_change_waits_for_its_acknowledgement() {
    use std::sync::{mpsc, Mutex};
    /// Acknowledges when the test says: through a channel, or through a
    /// hook that blocks (as a change held during a resynchronisation).
    struct Held(Mutex<Vec<AckSender>>, bool);
    impl Replicator for Held {
        fn submit(&self, _: &Change) -> Result<Ack, ReplicationError> {
            let (tx, ack) = Ack::channel();
            self.0.lock().unwrap().push(tx);
            Ok(if self.1 {
                Ack::done(Ok(())).map(move |r| ack.wait().and(r))
            } else {
                ack
            })
        }
    }
    for hook in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), b"there before").unwrap();
        let held = Arc::new(Held(Mutex::new(Vec::new()), hook));
        let guard = Mirror::mount(tmp.path(), held.clone()).unwrap();
        // Looked up now: the kernel locks the directory while the create
        // below waits, and a lookup there would wait for it too.
        fs::metadata(tmp.path().join("a")).unwrap();
        let dir = tmp.path().to_path_buf();
        let writer = std::thread::spawn(move || fs::write(dir.join("b"), b"held"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while held.0.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never reached the replicator"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The create waits for its acknowledgement; a read must not.
        let (tx, rx) = mpsc::channel();
        let path = tmp.path().join("a");
        std::thread::spawn(move || tx.send(fs::read(path).map_err(|e| e.to_string())));
        let read = rx.recv_timeout(Duration::from_secs(5));
        // Released whatever happened, so the mount can go.
        while !writer.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the held write never returned"
            );
            for tx in held.0.lock().unwrap().drain(..) {
                tx.send(Ok(()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.join().unwrap().unwrap();
        let read = read.unwrap_or_else(|_| {
            panic!("a read waited for another change's acknowledgement (hook: {hook})")
        });
        assert_eq!(read, Ok(b"there before".to_vec()));
        guard.unmount().unwrap();
    }
}

#[test]
fn a_panicking_test_leaves_no_mount_behind() {
    let mut mount_point = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Declared first, dropped last: the mount is still busy when the
        // fixture goes, so it is detached (lazy unmount).
        let _still_open: File;
        let fixture = Fixture::new(AckMode::Receipt);
        mount_point = Some(fixture.primary.clone());
        _still_open = File::create(fixture.primary.join("busy")).unwrap();
        panic!("test failure with a file still open");
    }));
    assert!(result.is_err());
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(mount_point.unwrap().to_str().unwrap()));
}

/// Acknowledges only when the test releases: what each call waits for.
/// Opened for good by its [`Opened`] guard, so a failing test does not
/// leave a close waiting for it forever (the mount could not go).
#[derive(Default)]
struct Gate(std::sync::Mutex<(Vec<AckSender>, bool)>);

impl Replicator for Gate {
    fn submit(&self, _: &Change) -> Result<Ack, ReplicationError> {
        let mut gate = self.0.lock().unwrap();
        if gate.1 {
            return Ok(Ack::done(Ok(())));
        }
        let (tx, ack) = Ack::channel();
        gate.0.push(tx);
        Ok(ack)
    }
}

/// Declared after the mount's guard: dropped before it.
struct Opened(Arc<Gate>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0 .0.lock().unwrap().1 = true;
        self.0.release();
    }
}

impl Gate {
    fn release(&self) {
        let senders: Vec<_> = self.0.lock().unwrap().0.drain(..).collect();
        for tx in senders {
            tx.send(Ok(()));
        }
    }

    /// Runs `call` on a thread: whether it returned within a while
    /// without acknowledgements; then acknowledges everything until it
    /// returned.
    fn waits<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(call().map(drop).map_err(|e| e.to_string())));
        // A call that does not wait returns within this; one that waits
        // is released below, so the bound only decides how long a wrong
        // answer takes to show.
        let returned = rx.recv_timeout(Duration::from_millis(300));
        if let Ok(r) = returned {
            r.unwrap();
            return false;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.release();
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(r) => {
                    r.unwrap();
                    return true;
                }
                Err(_) => assert!(std::time::Instant::now() < deadline, "never returned"),
            }
        }
    }
}

#[test]
fn only_calls_that_promise_durability_wait_for_the_secondary() {
    use std::os::unix::fs::OpenOptionsExt;
    for durability in [Durability::SyncCalls, Durability::EveryCall] {
        let every = durability == Durability::EveryCall;
        let tmp = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let options = MountOptions {
            durability,
            ..MountOptions::default()
        };
        let dir = tmp.path().to_path_buf();
        let p = dir.join("f");
        // Before mounting: with every call waiting, a create would too.
        File::create(&p).unwrap();
        let guard = Mirror::mount_with(tmp.path(), gate.clone(), options).unwrap();
        let _opened = Opened(gate.clone());
        let f = Arc::new(OpenOptions::new().write(true).open(&p).unwrap());
        let write = |f: &Arc<File>| {
            let f = f.clone();
            move || f.write_at(b"data", 0)
        };
        assert_eq!(gate.waits(write(&f)), every, "a write ({durability:?})");
        let g = f.clone();
        assert!(gate.waits(move || g.sync_data()), "fdatasync");
        let g = f.clone();
        gate.waits(write(&g));
        assert!(gate.waits(move || g.sync_all()), "fsync");
        let d = dir.clone();
        assert_eq!(
            gate.waits(move || fs::create_dir(d.join("sub"))),
            every,
            "mkdir"
        );
        let d = dir.clone();
        assert!(
            gate.waits(move || File::open(&d)?.sync_all()),
            "directory fsync"
        );
        let synced = Arc::new(
            OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
                .open(&p)
                .unwrap(),
        );
        gate.release();
        assert!(
            gate.waits(write(&synced)),
            "a write on an O_DSYNC descriptor"
        );
        // Close-to-open: the close of a file written through it waits
        // (unless the write did), of one not written through it, not.
        let written = Arc::new(OpenOptions::new().write(true).open(&p).unwrap());
        gate.release();
        gate.waits(write(&written));
        // The write's thread let its reference go before it answered.
        let written = Arc::try_unwrap(written).unwrap();
        assert_eq!(
            gate.waits(move || {
                drop(written);
                Ok(())
            }),
            !every,
            "close after a write"
        );
        let untouched = OpenOptions::new().write(true).open(&p).unwrap();
        assert!(
            !gate.waits(move || {
                drop(untouched);
                Ok(())
            }),
            "close without a write"
        );
        drop((f, synced));
        gate.release();
        guard.unmount().unwrap();
    }
}

#[test]
fn calls_beyond_the_unacknowledged_limits_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let options = MountOptions {
        limits: TailLimits {
            bytes: 100,
            age: Duration::from_secs(3600),
        },
        ..MountOptions::default()
    };
    File::create(tmp.path().join("f")).unwrap();
    let guard = Mirror::mount_with(tmp.path(), gate.clone(), options).unwrap();
    let _opened = Opened(gate.clone());
    let f = Arc::new(
        OpenOptions::new()
            .write(true)
            .open(tmp.path().join("f"))
            .unwrap(),
    );
    let g = f.clone();
    assert!(!gate.waits(move || g.write_at(&[1u8; 100], 0)), "within");
    let g = f.clone();
    assert!(gate.waits(move || g.write_at(&[2u8; 1], 100)), "beyond");
    assert_eq!(guard.tail().unacknowledged().changes, 0);
    drop(f);
    guard.unmount().unwrap();
}
