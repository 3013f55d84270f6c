#!/usr/bin/env python3
"""losefs - a FUSE file system that forgets what was never fsync'd, for power-loss tests,
and fails chosen operations with a chosen errno, for I/O-error tests.

    losefs.py BACKING MOUNTPOINT OUT [FAULTS]

Every operation goes through to BACKING at once (what processes see is an ordinary file
system), and losefs keeps, in memory, what a power cut would leave behind:

- a file's contents (and mode) as of its last fsync/fdatasync, per file (hard links and
  renames keep them); a file never synced is empty after the cut;
- a directory's entries (name -> inode, or a subdirectory) as of its last fsync, so a
  file created or renamed into a directory survives the cut only if that directory was
  fsync'd afterwards, and an unlinked or renamed-away name comes back if it was not.

That is POSIX's promise and no more (ext4 with a journal often keeps more). What was there
at mount time counts as synced. At unmount (`fusermount -u` or `umount`), the state after
a power cut is written to OUT as ordinary files and directories, to start the daemon on
it again. Single-threaded: every operation, fsync included, is atomic with respect to the
others, so the durable picture is exactly what the process was told was durable.

FAULTS, a file that may come and go while mounted, holds rules, one per line:
`OP ERRNO SUBSTRING` (`fsync EIO /spool/`): every OP (write, fsync, fsyncdir, create,
rename, link) on a path containing SUBSTRING fails with ERRNO before it has any effect
(a failed fsync leaves the durable picture as it was). The file is read again whenever it
changes (replace it by a rename); without it, or empty, nothing fails.

Not modelled: a torn write (a partly written page), reordering within an fsync'd file,
extended attributes, directory renames (strictmx does not rename directories).
"""
import errno
import os
import stat
import sys

try:  # Debian's python3-fusepy names the module fusepy; upstream names it fuse
    from fusepy import FUSE, FuseOSError, Operations, fuse_get_context
except ImportError:
    from fuse import FUSE, FuseOSError, Operations, fuse_get_context


class LoseFS(Operations):
    def __init__(self, backing, out, faults=None):
        self.root = os.path.realpath(backing)
        self.out = out
        self.faults = faults
        self.faults_seen = None  # (inode, mtime_ns, size) of the rules read last
        self.rules = []          # (op, errno, substring)
        # A file is known by an id of its own, not its inode number: a number freed by
        # an unlink is given to the next new file, while the old name may still be in
        # a directory's durable entries.
        self.ids = {}    # inode number -> id of the file that has it now
        self.next_id = 0
        self.meta = {}   # id -> (mode, uid, gid) at creation or the last fsync
        self.data = {}   # id -> contents as of the last fsync
        # "/rel/dir" -> {name: ("f", id) | ("d", mode, uid, gid) | ("l", target)}
        self.dirs = {}
        self._snapshot("/")

    # -- injected errors --
    def _fault(self, op, *paths):
        if self.faults is None:
            return
        try:
            st = os.stat(self.faults)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self.faults_seen:
            self.faults_seen, self.rules = seen, []
            if seen is not None:
                with open(self.faults) as f:
                    for line in f:
                        w = line.split()
                        if len(w) == 3:
                            self.rules.append((w[0], getattr(errno, w[1]), w[2]))
        for rop, err, sub in self.rules:
            if rop == op and any(sub in p for p in paths):
                raise FuseOSError(err)

    # -- the durable picture --
    def _b(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _new_id(self, st):
        self.next_id += 1
        self.ids[st.st_ino] = self.next_id
        self.meta[self.next_id] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        return self.next_id

    def _id(self, st):
        i = self.ids.get(st.st_ino)
        return i if i is not None else self._new_id(st)

    def _entry(self, path):
        st = os.lstat(self._b(path))
        if stat.S_ISDIR(st.st_mode):
            return ("d", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            return ("l", os.readlink(self._b(path)))
        return ("f", self._id(st))

    def _sync_file(self, path, fd):
        st = os.fstat(fd)
        chunks, off = [], 0
        while True:
            b = os.pread(fd, 1 << 20, off)
            if not b:
                break
            chunks.append(b)
            off += len(b)
        i = self._id(st)
        self.meta[i] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        self.data[i] = b"".join(chunks)

    def _sync_dir(self, path):
        names = os.listdir(self._b(path))
        self.dirs[path] = {n: self._entry(os.path.join(path, n)) for n in names}

    def _snapshot(self, path):
        self._sync_dir(path)
        for n, e in self.dirs[path].items():
            p = os.path.join(path, n)
            if e[0] == "d":
                self._snapshot(p)
            elif e[0] == "f":
                fd = os.open(self._b(p), os.O_RDONLY)
                try:
                    self._sync_file(p, fd)
                finally:
                    os.close(fd)

    def destroy(self, path):
        made = {}

        def build(rel, dst):
            for n, e in sorted(self.dirs.get(rel, {}).items()):
                p = os.path.join(dst, n)
                if e[0] == "d":
                    os.mkdir(p, e[1])
                    os.chown(p, e[2], e[3])
                    build(os.path.join(rel, n), p)
                elif e[0] == "l":
                    os.symlink(e[1], p)
                elif e[1] in made:
                    os.link(made[e[1]], p)
                else:
                    # never synced: the name survived, the contents did not
                    mode, uid, gid = self.meta.get(e[1], (0o600, 0, 0))
                    content = self.data.get(e[1], b"")
                    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                    try:
                        os.write(fd, content)
                        os.fchown(fd, uid, gid)
                        os.fchmod(fd, mode)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    made[e[1]] = p

        st = os.stat(self.root)
        os.chown(self.out, st.st_uid, st.st_gid)
        os.chmod(self.out, stat.S_IMODE(st.st_mode))
        build("/", self.out)
        with open(os.path.join(self.out, ".losefs-done"), "w") as f:
            f.write("%d files\n" % len(made))

    # -- passthrough --
    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._b(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid",
                                            "st_gid", "st_atime", "st_mtime", "st_ctime",
                                            "st_ino", "st_blocks")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._b(path))

    def statfs(self, path):
        v = os.statvfs(self._b(path))
        return {k: getattr(v, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                           "f_favail", "f_ffree", "f_files", "f_flag",
                                           "f_frsize", "f_namemax")}

    def _own(self, path):
        # created by this (root) process: owned by the caller, as without FUSE
        uid, gid, _ = fuse_get_context()
        os.lchown(self._b(path), uid, gid)

    def mkdir(self, path, mode):
        os.mkdir(self._b(path), mode)
        self._own(path)

    def rmdir(self, path):
        os.rmdir(self._b(path))

    def unlink(self, path):
        os.unlink(self._b(path))

    def rename(self, old, new):
        self._fault("rename", old, new)
        os.rename(self._b(old), self._b(new))

    def link(self, target, source):
        self._fault("link", target, source)
        os.link(self._b(source), self._b(target))

    def symlink(self, target, source):
        os.symlink(source, self._b(target))
        self._own(target)

    def readlink(self, path):
        return os.readlink(self._b(path))

    def chmod(self, path, mode):
        os.chmod(self._b(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._b(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._b(path), times)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._b(path), length)

    def _flags(self, flags):
        # always readable (fsync reads the file back), offsets as the kernel gives them
        return (flags & ~(os.O_ACCMODE | os.O_APPEND)) | os.O_RDWR

    def open(self, path, flags):
        return os.open(self._b(path), self._flags(flags))

    def create(self, path, mode, fi=None):
        self._fault("create", path)
        fd = os.open(self._b(path), os.O_RDWR | os.O_CREAT, mode)
        self._own(path)
        self._new_id(os.fstat(fd))  # a new file, maybe with a freed inode number
        return fd

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self._fault("write", path)
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def fsync(self, path, datasync, fh):
        self._fault("fsync", path)
        self._sync_file(path, fh)
        return 0

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        self._fault("fsyncdir", path)
        self._sync_dir(path)
        return 0

    def access(self, path, amode):
        if not os.path.lexists(self._b(path)):
            raise FuseOSError(errno.ENOENT)
        return 0


def main():
    if len(sys.argv) not in (4, 5):
        print("usage: losefs.py BACKING MOUNTPOINT OUT [FAULTS]", file=sys.stderr)
        return 2
    backing, mnt, out = sys.argv[1:4]
    faults = sys.argv[4] if len(sys.argv) == 5 else None
    # allow_other: strictmxd drops root for its user; default_permissions: the kernel
    # checks modes and owners as it would on a local file system
    FUSE(LoseFS(backing, out, faults), mnt, foreground=True, nothreads=True, allow_other=True,
         default_permissions=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
