/*
 * delivery/maildir - durable local delivery into Maildirs; see maildir.h.
 *
 * The message is spooled once, then hard-linked into every recipient's
 * Maildir, so N recipients cost one copy of the data. The Maildir protocol
 * (https://cr.yp.to/proto/maildir.html): write into tmp/, then rename into
 * new/; readers never look at tmp/, so a half-written file is never seen.
 *
 * RFC 5321 §6.1: once we answer 250 we "MUST NOT lose the message". Hence
 * every step is fsync'ed - the data, and the directories whose entries we
 * create (fsync(2): a file's fsync does not persist its directory entry) -
 * before commit returns 0. Any error makes the whole commit fail and undo
 * what it placed: the client retries after our 4xx, so the failure mode is at
 * worst a duplicate, never a loss. A failed fsync is never retried: after a
 * writeback error Linux may drop the dirty pages and a second fsync can
 * succeed without the data on disk (PostgreSQL "fsyncgate";
 * security-anchors §6.3).
 */
#include "delivery/maildir.h"

#include "common/log.h"
#include "common/xmalloc.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ERRLEN 512

struct maildir_msg {
	int fd;           /* spool file, open for writing until commit */
	char *spool_path; /* spool_dir/name */
	char *name;       /* unique file name, the same in every Maildir */
	bool failed;      /* a write failed: commit must fail */
	bool moved;       /* renamed away from spool_path by its owner */
	off_t written;    /* bytes written so far */
	off_t stale;      /* size of a recycled file before: cut at the end */
	char err[ERRLEN];
};

/* one file placed for this message, removed again on rollback */
struct placed {
	char *path;
};

static unsigned long maildir_counter; /* Q<n>: unique within this process */
static char maildir_host[256];        /* sanitized gethostname() */

static void set_err(char *err, size_t errlen, const char *op, const char *path, int e)
{
	if (errlen > 0)
		snprintf(err, errlen, "%s %s: %s", op, path, strerror(e));
}

/*
 * host_part - gethostname() for unique names. The Maildir spec replaces '/'
 * with "\057" and ':' with "\072": '/' cannot be in a file name and ':'
 * starts the info part (":2,S") of names in cur/.
 */
static void host_init(void)
{
	char raw[256];
	size_t o = 0;

	if (gethostname(raw, sizeof(raw)) < 0 || raw[0] == '\0')
		snprintf(raw, sizeof(raw), "localhost");
	raw[sizeof(raw) - 1] = '\0';
	for (const char *p = raw; *p != '\0' && o + 5 < sizeof(maildir_host); p++) {
		if (*p == '/' || *p == ':') {
			memcpy(maildir_host + o, *p == '/' ? "\\057" : "\\072", 4);
			o += 4;
		} else {
			maildir_host[o++] = *p;
		}
	}
	maildir_host[o] = '\0';
}

/* the spool (event loop) and deliveries (a worker thread) both name files */
static const char *host_part(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, host_init);
	return maildir_host;
}

static unsigned long next_counter(void)
{
	return __atomic_add_fetch(&maildir_counter, 1, __ATOMIC_RELAXED);
}

/* write_all - the whole buffer, across EINTR and short writes */
static int write_all(int fd, const void *p, size_t n)
{
	const char *b = p;

	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* fsync_dir - persist the entries created in (or renamed into) dir */
static int fsync_dir(const char *dir, char *err, size_t errlen)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		set_err(err, errlen, "open", dir, errno);
		return -1;
	}
	if (fsync(fd) < 0) {
		set_err(err, errlen, "fsync", dir, errno);
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/*
 * mkdir_p - create path and its missing parents with mode 0700, fsyncing the
 * parent of every directory created (otherwise a crash could lose the new
 * directory and with it a message renamed into it).
 */
static int mkdir_p(const char *path, char *err, size_t errlen)
{
	char *buf = xstrdup(path);
	size_t len = strlen(buf);
	struct stat st;
	int rc = -1;

	while (len > 1 && buf[len - 1] == '/')
		buf[--len] = '\0';
	for (size_t i = 1; i <= len; i++) {
		char saved;

		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		saved = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0700) == 0) {
			char *slash = strrchr(buf, '/');
			const char *parent = ".";
			char *pbuf = NULL;

			if (slash == buf)
				parent = "/";
			else if (slash != NULL)
				parent = pbuf = xstrndup(buf, (size_t)(slash - buf));
			int frc = fsync_dir(parent, err, errlen);
			free(pbuf);
			if (frc < 0)
				goto out;
		} else if (errno != EEXIST) {
			set_err(err, errlen, "mkdir", buf, errno);
			goto out;
		}
		buf[i] = saved;
	}
	/* EEXIST on the last component may be a file: say so here */
	if (stat(buf, &st) < 0) {
		set_err(err, errlen, "stat", buf, errno);
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		set_err(err, errlen, "mkdir", buf, ENOTDIR);
		goto out;
	}
	rc = 0;
out:
	free(buf);
	return rc;
}

/*
 * Recycled spool files (maildir_recycle): the inodes of delivered queue
 * files, renamed into the spool directory and written over in place when a
 * new message takes one. Creating and deleting a file per message costs
 * more than the write itself on ext4 without a journal, whose inode
 * allocator skips (and reads) every inode freed in the last seconds; a kept
 * inode costs two renames (and a truncate if the new message is shorter).
 * Only files without another link are kept (a
 * Maildir delivery links the queue file into the mailbox). At most
 * RECYCLE_MAX are kept; the queue's start removes leftovers of a crash
 * with the rest of the spool.
 */
#define RECYCLE_MAX 64

static pthread_mutex_t recycle_mu = PTHREAD_MUTEX_INITIALIZER;
static struct recycled {
	char *path;
	off_t size;
} recycle[RECYCLE_MAX];
static size_t recycle_n;

int maildir_recycle(const char *path, const char *spool_dir)
{
	pthread_mutex_lock(&recycle_mu);
	bool room = recycle_n < RECYCLE_MAX;
	pthread_mutex_unlock(&recycle_mu);
	if (!room)
		return -1;
	/* only a file with no other name: a Maildir delivery may have linked
	 * the queue file into a mailbox, and reuse truncates it. Nothing links
	 * it after this point (its new name is ours alone). */
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1)
		return -1;
	char *dst = xasprintf("%s/" MAILDIR_RECYCLED_PREFIX "%lu", spool_dir, next_counter());
	if (rename(path, dst) < 0) {
		free(dst);
		return -1;
	}
	pthread_mutex_lock(&recycle_mu);
	if (recycle_n < RECYCLE_MAX) {
		recycle[recycle_n++] = (struct recycled){dst, st.st_size};
		dst = NULL;
	}
	pthread_mutex_unlock(&recycle_mu);
	if (dst) {
		unlink(dst);
		free(dst);
	}
	return 0;
}

void maildir_recycle_clear(void)
{
	pthread_mutex_lock(&recycle_mu);
	while (recycle_n > 0) {
		char *path = recycle[--recycle_n].path;
		unlink(path);
		free(path);
	}
	pthread_mutex_unlock(&recycle_mu);
}

/*
 * recycled_open - a recycled file under spool_dir, open for writing from
 * the start, or -1. It is overwritten in place (no blocks freed and
 * allocated again) and cut to what was written before its fsync
 * (spool_cut); *stale is its old size.
 */
static int recycled_open(const char *spool_dir, char **path, off_t *stale)
{
	size_t dlen = strlen(spool_dir);
	for (;;) {
		struct recycled r = {NULL, 0};
		pthread_mutex_lock(&recycle_mu);
		if (recycle_n > 0)
			r = recycle[--recycle_n];
		pthread_mutex_unlock(&recycle_mu);
		if (r.path == NULL)
			return -1;
		if (strncmp(r.path, spool_dir, dlen) == 0 && r.path[dlen] == '/') {
			int fd = open(r.path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
			if (fd >= 0) {
				*path = r.path;
				*stale = r.size;
				return fd;
			}
		}
		unlink(r.path);
		free(r.path);
	}
}

/* spool_cut - a recycled file loses what is left of its old content */
static int spool_cut(struct maildir_msg *m)
{
	if (m->stale <= m->written)
		return 0;
	if (ftruncate(m->fd, m->written) < 0) {
		set_err(m->err, sizeof(m->err), "ftruncate", m->spool_path, errno);
		m->failed = true;
		return -1;
	}
	m->stale = 0;
	return 0;
}

struct maildir_msg *maildir_begin(const char *spool_dir, char *err, size_t errlen)
{
	struct maildir_msg *m;

	m = xcalloc(1, sizeof(*m));
	m->fd = -1;
	bool made = false;
	/* EEXIST can only come from a stale file of a dead process with our pid */
	for (int tries = 0; tries < 8; tries++) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		free(m->name);
		free(m->spool_path);
		m->name = xasprintf("%lld.M%ldP%ldQ%lu.%s", (long long)ts.tv_sec,
		                    (long)(ts.tv_nsec / 1000), (long)getpid(), next_counter(),
		                    host_part());
		if (tries == 0 && !made) {
			m->fd = recycled_open(spool_dir, &m->spool_path, &m->stale);
			if (m->fd >= 0)
				break;
		}
		m->spool_path = xasprintf("%s/%s", spool_dir, m->name);
		m->fd =
		    open(m->spool_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
		/* the directory is created (mkdir_p) only when it is missing, not
		 * checked component by component for every message */
		if (m->fd < 0 && errno == ENOENT && !made) {
			made = true;
			if (mkdir_p(spool_dir, err, errlen) < 0) {
				free(m->name);
				free(m->spool_path);
				free(m);
				return NULL;
			}
			tries--;
			continue;
		}
		if (m->fd >= 0 || errno != EEXIST)
			break;
	}
	if (m->fd < 0) {
		set_err(err, errlen, "open", m->spool_path, errno);
		free(m->name);
		free(m->spool_path);
		free(m);
		return NULL;
	}
	return m;
}

int maildir_write(struct maildir_msg *m, const void *p, size_t n)
{
	if (m->failed)
		return -1;
	if (n == 0)
		return 0;
	if (write_all(m->fd, p, n) < 0) {
		set_err(m->err, sizeof(m->err), "write", m->spool_path, errno);
		m->failed = true;
		return -1;
	}
	m->written += (off_t)n;
	return 0;
}

static void msg_free(struct maildir_msg **mp)
{
	struct maildir_msg *m = *mp;

	if (m == NULL)
		return;
	if (m->fd >= 0)
		close(m->fd);
	if (!m->moved && unlink(m->spool_path) < 0 && errno != ENOENT) {
		char esc[512];
		log_warn("event=maildir_spool_unlink path=%s error=\"%s\"",
		         log_escape(m->spool_path, strlen(m->spool_path), esc, sizeof(esc)),
		         strerror(errno));
	}
	free(m->spool_path);
	free(m->name);
	free(m);
	*mp = NULL;
}

void maildir_abort(struct maildir_msg **m)
{
	msg_free(m);
}

int maildir_user_ok(const char *user)
{
	size_t n = 0;

	if (user == NULL || user[0] == '\0' || user[0] == '.')
		return 0;
	for (const char *p = user; *p != '\0'; p++, n++) {
		char ch = *p;
		if (n >= 64)
			return 0;
		if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
		      ch == '_' || ch == '+' || ch == '-'))
			return 0;
	}
	return 1;
}

/*
 * domain_ok - the caller validated the domain; this only makes sure it
 * cannot leave base ("..", "/") whatever the caller did.
 */
static bool domain_ok(const char *d)
{
	return d != NULL && d[0] != '\0' && d[0] != '.' && strchr(d, '/') == NULL &&
	       strlen(d) <= 255;
}

/* copy_file - the fallback when src and dst cannot share an inode */
static int copy_file(const char *src, const char *dst, char *err, size_t errlen)
{
	char buf[65536];
	int in, out;

	in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0) {
		set_err(err, errlen, "open", src, errno);
		return -1;
	}
	out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (out < 0) {
		set_err(err, errlen, "open", dst, errno);
		close(in);
		return -1;
	}
	for (;;) {
		ssize_t r = read(in, buf, sizeof(buf));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			set_err(err, errlen, "read", src, errno);
			goto fail;
		}
		if (r == 0)
			break;
		if (write_all(out, buf, (size_t)r) < 0) {
			set_err(err, errlen, "write", dst, errno);
			goto fail;
		}
	}
	close(in);
	if (fsync(out) < 0) {
		set_err(err, errlen, "fsync", dst, errno);
		close(out);
		return -1;
	}
	if (close(out) < 0) {
		set_err(err, errlen, "close", dst, errno);
		return -1;
	}
	return 0;
fail:
	close(in);
	close(out);
	return -1;
}

/*
 * deliver_one - spool file -> dir/tmp/name -> dir/new/name. *placed is set
 * to whatever path currently holds our file, so that the caller can remove
 * it whether this succeeded or not.
 */
static int deliver_one(const struct maildir_msg *m, const char *dir, char **placed, bool sync,
                       char *err, size_t errlen)
{
	static const char *const sub[] = {"tmp", "new", "cur"};
	char *tmp_path = NULL, *new_path = NULL, *new_dir = NULL;
	bool created = false;
	int rc = -1;

	if (mkdir_p(dir, err, errlen) < 0)
		return -1;
	for (size_t i = 0; i < 3; i++) {
		char *d = xasprintf("%s/%s", dir, sub[i]);
		if (mkdir(d, 0700) == 0) {
			created = true;
		} else if (errno != EEXIST) {
			set_err(err, errlen, "mkdir", d, errno);
			free(d);
			return -1;
		}
		free(d);
	}
	if (created && fsync_dir(dir, err, errlen) < 0)
		return -1;

	tmp_path = xasprintf("%s/tmp/%s", dir, m->name);
	new_dir = xasprintf("%s/new", dir);
	new_path = xasprintf("%s/%s", new_dir, m->name);
	if (link(m->spool_path, tmp_path) == 0) {
		*placed = xstrdup(tmp_path);
	} else if (errno == EXDEV || errno == EPERM) {
		/* another file system, or one without hard links: copy */
		*placed = xstrdup(tmp_path);
		if (copy_file(m->spool_path, tmp_path, err, errlen) < 0)
			goto out;
	} else {
		set_err(err, errlen, "link", tmp_path, errno);
		goto out;
	}
	if (rename(tmp_path, new_path) < 0) {
		set_err(err, errlen, "rename", new_path, errno);
		goto out;
	}
	free(*placed);
	*placed = xstrdup(new_path);
	if (sync && fsync_dir(new_dir, err, errlen) < 0)
		goto out;
	rc = 0;
out:
	free(tmp_path);
	free(new_path);
	free(new_dir);
	return rc;
}

int maildir_commit(struct maildir_msg **mp, const char *base, const struct maildir_rcpt *rcpts,
                   size_t n, char *err, size_t errlen)
{
	struct maildir_msg *m = *mp;
	struct placed *placed;
	size_t n_placed = 0;
	int rc = -1;

	if (m->failed) {
		snprintf(err, errlen, "%s", m->err);
		msg_free(mp);
		return -1;
	}
	if (n == 0) {
		snprintf(err, errlen, "maildir commit without recipients");
		msg_free(mp);
		return -1;
	}
	/* the data first: every link below shares this inode */
	if (spool_cut(m) < 0) {
		snprintf(err, errlen, "%s", m->err);
		msg_free(mp);
		return -1;
	}
	if (fsync(m->fd) < 0) {
		set_err(err, errlen, "fsync", m->spool_path, errno);
		msg_free(mp);
		return -1;
	}
	int fd = m->fd;
	m->fd = -1;
	if (close(fd) < 0) {
		set_err(err, errlen, "close", m->spool_path, errno);
		msg_free(mp);
		return -1;
	}

	placed = xcalloc(n, sizeof(*placed));
	for (size_t i = 0; i < n; i++) {
		bool dup = false;
		char *dir;

		if (!domain_ok(rcpts[i].domain) || !maildir_user_ok(rcpts[i].user)) {
			snprintf(err, errlen, "maildir: unusable recipient \"%.64s\"@\"%.255s\"",
			         rcpts[i].user ? rcpts[i].user : "",
			         rcpts[i].domain ? rcpts[i].domain : "");
			goto out;
		}
		/* the same mailbox twice: one copy (a second link would collide) */
		for (size_t j = 0; j < i && !dup; j++)
			dup = strcmp(rcpts[i].domain, rcpts[j].domain) == 0 &&
			      strcmp(rcpts[i].user, rcpts[j].user) == 0;
		if (dup)
			continue;
		dir = xasprintf("%s/%s/%s", base, rcpts[i].domain, rcpts[i].user);
		int drc = deliver_one(m, dir, &placed[n_placed].path, true, err, errlen);
		if (placed[n_placed].path != NULL)
			n_placed++;
		free(dir);
		if (drc < 0)
			goto out;
	}
	rc = 0;
out:
	for (size_t i = 0; i < n_placed; i++) {
		/* rollback: the client retries after 4xx, a kept copy would duplicate */
		if (rc < 0 && unlink(placed[i].path) < 0 && errno != ENOENT) {
			char esc[512];
			log_warn(
			    "event=maildir_rollback path=%s error=\"%s\"",
			    log_escape(placed[i].path, strlen(placed[i].path), esc, sizeof(esc)),
			    strerror(errno));
		}
		free(placed[i].path);
	}
	free(placed);
	msg_free(mp);
	return rc;
}

int maildir_spool_finish(struct maildir_msg *m, char *err, size_t errlen)
{
	if (m->failed) {
		snprintf(err, errlen, "%s", m->err);
		return -1;
	}
	if (m->fd < 0)
		return 0;
	if (spool_cut(m) < 0) {
		snprintf(err, errlen, "%s", m->err);
		return -1;
	}
	if (fsync(m->fd) < 0) {
		set_err(err, errlen, "fsync", m->spool_path, errno);
		m->failed = true;
		return -1;
	}
	int fd = m->fd;
	m->fd = -1;
	if (close(fd) < 0) {
		set_err(err, errlen, "close", m->spool_path, errno);
		m->failed = true;
		return -1;
	}
	return 0;
}

int maildir_spool_fd(struct maildir_msg *m)
{
	return m->failed || spool_cut(m) < 0 ? -1 : m->fd;
}

int maildir_spool_close(struct maildir_msg *m, int sync_errno, char *err, size_t errlen)
{
	if (m->failed || m->fd < 0)
		return maildir_spool_finish(m, err, errlen);
	int fd = m->fd;
	m->fd = -1;
	if (sync_errno != 0) {
		close(fd);
		set_err(m->err, sizeof(m->err), "fsync", m->spool_path, sync_errno);
		m->failed = true;
		snprintf(err, errlen, "%s", m->err);
		return -1;
	}
	if (close(fd) < 0) {
		set_err(m->err, sizeof(m->err), "close", m->spool_path, errno);
		m->failed = true;
		snprintf(err, errlen, "%s", m->err);
		return -1;
	}
	return 0;
}

const char *maildir_spool_path(const struct maildir_msg *m)
{
	return m->spool_path;
}

void maildir_spool_moved(struct maildir_msg *m)
{
	m->moved = true;
}

int maildir_place_file(const char *path, const char *base, const struct maildir_rcpt *r,
                       char **placed, char *err, size_t errlen)
{
	struct timespec ts;

	*placed = NULL;
	if (!domain_ok(r->domain) || !maildir_user_ok(r->user)) {
		snprintf(err, errlen, "maildir: unusable recipient \"%.64s\"@\"%.255s\"",
		         r->user ? r->user : "", r->domain ? r->domain : "");
		return -1;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	struct maildir_msg m = {.fd = -1, .spool_path = (char *)path};
	m.name = xasprintf("%lld.M%ldP%ldQ%lu.%s", (long long)ts.tv_sec, (long)(ts.tv_nsec / 1000),
	                   (long)getpid(), next_counter(), host_part());
	char *dir = xasprintf("%s/%s/%s", base, r->domain, r->user);
	int rc = deliver_one(&m, dir, placed, false, err, errlen);
	if (rc < 0 && *placed != NULL) {
		if (unlink(*placed) < 0 && errno != ENOENT)
			log_warn("event=maildir_rollback error=\"%s\"", strerror(errno));
		free(*placed);
		*placed = NULL;
	}
	free(dir);
	free(m.name);
	return rc;
}
