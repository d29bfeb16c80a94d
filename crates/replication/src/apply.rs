//! The real directory, reached through a file descriptor held open, and the
//! operations on it shared by the primary (local apply) and the secondary.
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_XDEV)` from the held descriptor: never through the FUSE mount
//! on top of the same path, never out of the directory, never through a
//! symbolic link or into another mount.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    self as rfs, AtFlags, FallocateFlags, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Stat,
    Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use std::os::unix::ffi::OsStringExt;

use crate::entry::EntryState;
use crate::op::{Change, Op, Time};
use crate::tracking::dirty::Move;

/// The replicated directory, opened before anything is mounted on it.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// A directory and a name in it: how `*at()` calls address an object.
pub(crate) struct Entry {
    pub dir: OwnedFd,
    pub name: CString,
}

impl Entry {
    /// Creates a regular file of this name, which must not exist.
    pub fn create_file(&self, mode: u32) -> Result<OwnedFd, Errno> {
        rfs::openat(
            &self.dir,
            &self.name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )
    }

    /// Sets owner then mode of a node just made here (no symbolic link
    /// when `mode` is given), as [`Root::set_owner_mode`] does by path.
    pub fn set_owner_mode(&self, uid: u32, gid: u32, mode: Option<u32>) -> Result<(), Errno> {
        rfs::chownat(
            &self.dir,
            &self.name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        if let Some(mode) = mode {
            rfs::chmodat(
                &self.dir,
                &self.name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        Ok(())
    }
}

/// Sets owner then mode of the open file `fd` (chown clears set-user-ID
/// bits: the mode comes last).
pub(crate) fn set_file_owner_mode(
    fd: &OwnedFd,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), Errno> {
    rfs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))
}

impl Root {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let fd = rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens `rel` beneath the directory (`""` is the directory itself)
    /// without following a symbolic link, even the last component.
    pub fn open(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
        rfs::openat2(
            &self.fd,
            dot_if_empty(rel),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// Opens the directory `rel`; a symbolic link there is ELOOP (refused
    /// like any on the way), not a link to open.
    fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Errno> {
        rfs::openat2(
            &self.fd,
            dot_if_empty(rel),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
    }

    /// The parent directory of `rel` and its last name; for `""`, the
    /// directory itself and `"."`.
    pub fn entry(&self, rel: &Path) -> Result<Entry, Errno> {
        let parent = crate::op::parent_of(rel);
        let name = match rel.file_name() {
            Some(name) => name,
            None => OsStr::new("."),
        };
        let dir = self.open_dir(parent)?;
        let name = CString::new(name.as_bytes()).map_err(|_| Errno::INVAL)?;
        Ok(Entry { dir, name })
    }

    pub fn stat(&self, rel: &Path) -> Result<Stat, Errno> {
        let e = self.entry(rel)?;
        rfs::statat(&e.dir, &e.name, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Sets owner then mode: chown clears set-user-ID bits, so the mode
    /// must come last to stick. Symbolic links have no mode of their own.
    pub fn set_owner_mode(
        &self,
        rel: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Result<(), Errno> {
        let obj = self.open(rel, OFlags::PATH)?;
        if uid.is_some() || gid.is_some() {
            rfs::chownat(
                &obj,
                "",
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )?;
        }
        if let Some(mode) = mode {
            let st = rfs::fstat(&obj)?;
            if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::Symlink {
                // An O_PATH descriptor accepts no fchmod; its /proc link does.
                rfs::chmod(proc_path(&obj), Mode::from_raw_mode(mode & 0o7777))?;
            }
        }
        Ok(())
    }

    /// Sets access and/or modification time, never following a symbolic link.
    pub fn set_times(
        &self,
        rel: &Path,
        atime: Option<Time>,
        mtime: Option<Time>,
    ) -> Result<(), Errno> {
        let e = self.entry(rel)?;
        let times = Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        };
        rfs::utimensat(&e.dir, &e.name, &times, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// [`Root::set_times`] of an open file.
    pub fn set_file_times(
        fd: &OwnedFd,
        atime: Option<Time>,
        mtime: Option<Time>,
    ) -> Result<(), Errno> {
        let times = Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        };
        rfs::futimens(fd, &times)
    }

    pub fn truncate(&self, rel: &Path, size: u64) -> Result<(), Errno> {
        rfs::ftruncate(self.open(rel, OFlags::WRONLY)?, size)
    }

    /// Applies a change received from the primary. The order of steps for
    /// each operation is the one the primary used.
    pub fn apply(&self, change: &Change) -> Result<(), Errno> {
        match &change.op {
            Op::Write { path, offset, data } => {
                let fd = self.open(path, OFlags::WRONLY)?;
                write_all_at(&fd, data, *offset)?;
            }
            Op::Create {
                path,
                mode,
                uid,
                gid,
            } => {
                let fd = self.entry(path)?.create_file(*mode)?;
                set_file_owner_mode(&fd, *uid, *gid, *mode)?;
            }
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => {
                let e = self.entry(path)?;
                rfs::mknodat(
                    &e.dir,
                    &e.name,
                    rfs::FileType::from_raw_mode(*mode),
                    Mode::from_raw_mode(mode & 0o777),
                    *rdev,
                )?;
                e.set_owner_mode(*uid, *gid, Some(*mode))?;
            }
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => {
                let e = self.entry(path)?;
                rfs::mkdirat(&e.dir, &e.name, Mode::from_raw_mode(mode & 0o777))?;
                e.set_owner_mode(*uid, *gid, Some(*mode))?;
            }
            Op::Unlink { path } => {
                let e = self.entry(path)?;
                rfs::unlinkat(&e.dir, &e.name, AtFlags::empty())?;
            }
            Op::Rmdir { path } => {
                let e = self.entry(path)?;
                rfs::unlinkat(&e.dir, &e.name, AtFlags::REMOVEDIR)?;
            }
            Op::Rename { from, to, flags } => {
                let (a, b) = (self.entry(from)?, self.entry(to)?);
                let flags = RenameFlags::from_bits(*flags).ok_or(Errno::INVAL)?;
                rfs::renameat_with(&a.dir, &a.name, &b.dir, &b.name, flags)?;
            }
            Op::Link { from, to } => {
                let (a, b) = (self.entry(from)?, self.entry(to)?);
                rfs::linkat(&a.dir, &a.name, &b.dir, &b.name, AtFlags::empty())?;
            }
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => {
                let e = self.entry(path)?;
                rfs::symlinkat(target.as_path(), &e.dir, &e.name)?;
                e.set_owner_mode(*uid, *gid, None)?;
            }
            Op::SetAttr {
                path,
                mode,
                uid,
                gid,
                size,
                atime,
                mtime,
            } => {
                if let Some(size) = size {
                    self.truncate(path, *size)?;
                }
                self.set_owner_mode(path, *uid, *gid, *mode)?;
                if atime.is_some() || mtime.is_some() {
                    self.set_times(path, *atime, *mtime)?;
                }
            }
            Op::Fallocate {
                path,
                offset,
                length,
                mode,
            } => {
                let fd = self.open(path, OFlags::WRONLY)?;
                rfs::fallocate(
                    fd,
                    FallocateFlags::from_bits_retain(*mode as u32),
                    *offset,
                    *length,
                )?;
            }
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                let obj = self.open(path, OFlags::PATH)?;
                rfs::setxattr(
                    proc_path(&obj),
                    OsStr::from_bytes(name),
                    value,
                    XattrFlags::from_bits_retain(*flags as u32),
                )?;
            }
            Op::RemoveXattr { path, name } => {
                let obj = self.open(path, OFlags::PATH)?;
                rfs::removexattr(proc_path(&obj), OsStr::from_bytes(name))?;
            }
            Op::Fsync { path } => self.fsync(path)?,
        }
        for stamp in &change.stamps {
            self.set_times(&stamp.path, None, Some(stamp.mtime))?;
        }
        Ok(())
    }

    /// Makes `rel` and the directory naming it durable (see
    /// [`Self::flush_targets`]).
    pub fn fsync(&self, rel: &Path) -> Result<(), Errno> {
        self.flush_targets(rel)?.iter().try_for_each(rfs::fsync)
    }

    /// What makes `rel` durable, opened now (a later rename does not change
    /// what is synced): `rel` if a regular file or a directory (opening a
    /// device or a fifo has effects), and the directory naming it — only
    /// that one for other nodes and for a path gone (unlinked).
    pub fn flush_targets(&self, rel: &Path) -> Result<Vec<OwnedFd>, Errno> {
        let kind = match self.stat(rel) {
            Ok(st) => Some(rfs::FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e),
        };
        let mut targets = Vec::new();
        if let Some(rfs::FileType::RegularFile | rfs::FileType::Directory) = kind {
            targets.push(self.open(rel, OFlags::RDONLY)?);
        }
        if let Some(parent) = rel.parent() {
            targets.push(self.open(parent, OFlags::RDONLY | OFlags::DIRECTORY)?);
        }
        Ok(targets)
    }
}

/// `/proc/self/fd/N`: lets path-based calls (xattrs, chmod) act on the very
/// object an `O_PATH` descriptor holds, symbolic links included.
pub(crate) fn proc_path(fd: &impl AsFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

fn dot_if_empty(rel: &Path) -> &Path {
    if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }
}

fn timespec(time: Option<Time>) -> Timespec {
    match time {
        Some(t) => Timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec.into(),
        },
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
    }
}

/// `pwrite` until every byte is written (a short write is not an error).
pub(crate) fn write_all_at(fd: &impl AsFd, mut data: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        match rustix::io::pwrite(fd, data, offset) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resynchronisation support: reading and making entries identical.
impl Root {
    /// Names in the directory `rel` (without `.` and `..`); none if it is
    /// not a directory.
    pub fn list(&self, rel: &Path) -> Result<Vec<std::ffi::OsString>, Errno> {
        let fd = match self.open(rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in rfs::Dir::new(fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                out.push(std::ffi::OsString::from_vec(name));
            }
        }
        Ok(out)
    }

    /// Extended attributes of `rel` (not following a symbolic link).
    pub fn xattrs(
        &self,
        rel: &Path,
    ) -> Result<Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>, Errno> {
        let obj = self.open(rel, OFlags::PATH)?;
        let path = proc_path(&obj);
        let size = rfs::listxattr_query(&path)?;
        let mut names = vec![0u8; size];
        let n = rfs::listxattr(&path, &mut names[..])?;
        let mut out = Vec::new();
        for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let os = OsStr::from_bytes(name);
            let len = rfs::getxattr_query(&path, os)?;
            let mut value = vec![0u8; len];
            let len = rfs::getxattr(&path, os, &mut value[..])?;
            value.truncate(len);
            out.push((
                serde_bytes::ByteBuf::from(name.to_vec()),
                serde_bytes::ByteBuf::from(value),
            ));
        }
        out.sort();
        Ok(out)
    }

    /// Removes `rel` whatever it is, a directory with all it holds.
    pub fn remove_tree(&self, rel: &Path) -> Result<(), Errno> {
        let st = self.stat(rel)?;
        let dir = rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory;
        if dir {
            for name in self.list(rel)? {
                self.remove_tree(&rel.join(name))?;
            }
        }
        let e = self.entry(rel)?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rfs::unlinkat(&e.dir, &e.name, flags)
    }

    /// Makes `rel` what the primary has; `true` if it had to be created
    /// (so it holds none of the primary's content yet) or linked to
    /// [`Attributes::link`](crate::entry::Attributes::link) (so it holds that
    /// name's).
    pub fn ensure(&self, rel: &Path, state: &EntryState) -> Result<bool, Errno> {
        let current = match self.stat(rel) {
            Ok(st) => Some(st),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(e),
        };
        let EntryState::Present(want) = state else {
            if current.is_some() {
                self.remove_tree(rel)?;
            }
            return Ok(false);
        };
        let kind = rfs::FileType::from_raw_mode(want.mode);
        // Checked before anything changes: only a regular file is linked,
        // to another name holding one.
        let first = match &want.link {
            Some(first) => {
                let st = self.stat(first)?;
                let regular =
                    |mode| rfs::FileType::from_raw_mode(mode) == rfs::FileType::RegularFile;
                if first == rel || !regular(want.mode) || !regular(st.st_mode) {
                    return Err(Errno::INVAL);
                }
                Some((st.st_dev, st.st_ino))
            }
            None => None,
        };
        let same = current.as_ref().is_some_and(|st| match first {
            // That name's file here too.
            Some(id) => (st.st_dev, st.st_ino) == id,
            None => {
                rfs::FileType::from_raw_mode(st.st_mode) == kind
                    && match kind {
                        rfs::FileType::Symlink => {
                            self.link_target(rel).is_ok_and(|t| t == want.target)
                        }
                        rfs::FileType::CharacterDevice | rfs::FileType::BlockDevice => {
                            st.st_rdev == want.rdev
                        }
                        // Created while alone: whatever has this name here is
                        // another file. One name there, several here: this
                        // file is (also) another one (writing it would change
                        // that one too).
                        rfs::FileType::RegularFile => {
                            !(want.fresh || want.nlink == 1 && st.st_nlink > 1)
                        }
                        _ => true,
                    }
            }
        });
        let created = !same;
        if created {
            if current.is_some() {
                self.remove_tree(rel)?;
            }
            let e = self.entry(rel)?;
            let perm = Mode::from_raw_mode(want.mode & 0o777);
            if let Some(first) = &want.link {
                let first = self.entry(first)?;
                rfs::linkat(&first.dir, &first.name, &e.dir, &e.name, AtFlags::empty())?;
            } else {
                match kind {
                    rfs::FileType::RegularFile => {
                        e.create_file(want.mode)?;
                    }
                    rfs::FileType::Directory => rfs::mkdirat(&e.dir, &e.name, perm)?,
                    rfs::FileType::Symlink => {
                        rfs::symlinkat(OsStr::from_bytes(&want.target), &e.dir, &e.name)?
                    }
                    _ => rfs::mknodat(&e.dir, &e.name, kind, perm, want.rdev)?,
                }
            }
        }
        if kind == rfs::FileType::RegularFile {
            self.truncate(rel, want.size)?;
        }
        let mode = (kind != rfs::FileType::Symlink).then_some(want.mode);
        self.set_owner_mode(rel, Some(want.uid), Some(want.gid), mode)?;
        let have = self.xattrs(rel)?;
        let obj = self.open(rel, OFlags::PATH)?;
        for (name, _) in have
            .iter()
            .filter(|(n, _)| !want.xattrs.iter().any(|(w, _)| w == n))
        {
            rfs::removexattr(proc_path(&obj), OsStr::from_bytes(name))?;
        }
        for (name, value) in &want.xattrs {
            if !have.iter().any(|(n, v)| n == name && v == value) {
                rfs::setxattr(
                    proc_path(&obj),
                    OsStr::from_bytes(name),
                    value,
                    XattrFlags::empty(),
                )?;
            }
        }
        self.set_times(rel, None, Some(want.mtime))?;
        Ok(created)
    }

    fn link_target(&self, rel: &Path) -> Result<Vec<u8>, Errno> {
        let e = self.entry(rel)?;
        Ok(rfs::readlinkat(&e.dir, &e.name, Vec::new())?.into_bytes())
    }

    /// SHA-256 of each `block`-sized block of the regular file `rel`.
    /// SHA-256 of each `block`-sized block of `rel` from `offset`, up to
    /// `len` bytes or its end.
    pub fn hashes(
        &self,
        rel: &Path,
        block: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<[u8; 32]>, Errno> {
        use sha2::Digest;
        let fd = match self.open(rel, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut buf = vec![0u8; block as usize];
        let end = offset.saturating_add(len);
        let mut offset = offset;
        while offset < end {
            let want = buf
                .len()
                .min((end - offset).try_into().unwrap_or(usize::MAX));
            let mut done = 0;
            while done < want {
                match rustix::io::pread(&fd, &mut buf[done..want], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e),
                }
            }
            if done == 0 {
                break;
            }
            out.push(sha2::Sha256::digest(&buf[..done]).into());
            offset += done as u64;
        }
        Ok(out)
    }

    /// Replays renames and hard links; returns how many did not apply.
    pub fn replay(&self, moves: &[Move]) -> u32 {
        let mut skipped = 0;
        for m in moves {
            let result = self.entry(&m.from).and_then(|a| {
                let b = self.entry(&m.to)?;
                match m.rename_flags {
                    Some(flags) => rfs::renameat_with(
                        &a.dir,
                        &a.name,
                        &b.dir,
                        &b.name,
                        RenameFlags::from_bits(flags).ok_or(Errno::INVAL)?,
                    ),
                    None => rfs::linkat(&a.dir, &a.name, &b.dir, &b.name, AtFlags::empty()),
                }
            });
            if result.is_err() {
                skipped += 1;
            }
        }
        skipped
    }

    /// Flushes the whole file system holding the directory.
    pub fn syncfs(&self) -> Result<(), Errno> {
        rfs::syncfs(self.open(Path::new(""), OFlags::RDONLY | OFlags::DIRECTORY)?)
    }
}
