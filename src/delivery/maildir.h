/*
 * delivery/maildir - durable local delivery into Maildirs.
 *
 * A message is first written once to a spool file (begin/write), then
 * committed to every recipient's Maildir: fsync the spool file, hard-link (or
 * copy, across file systems) into <base>/<domain>/<user>/tmp/, fsync, rename
 * into new/, fsync new/ (the directory). Only when that returned 0 may the
 * caller answer 250. On any failure every link already made for this message
 * is removed again and -1 is returned: the caller answers 4xx and the client
 * retries; nothing is lost and, in the normal case, nothing is duplicated.
 */
#ifndef STRICTMX_DELIVERY_MAILDIR_H
#define STRICTMX_DELIVERY_MAILDIR_H

#include <stddef.h>
#include <sys/types.h>

struct maildir_msg;

/* maildir_begin - create a spool file under spool_dir (created 0700 if absent) */
struct maildir_msg *maildir_begin(const char *spool_dir, char *err, size_t errlen);
/* maildir_write - append; -1 on I/O error (err kept, later commit fails) */
int maildir_write(struct maildir_msg *m, const void *p, size_t n);

struct maildir_rcpt {
	const char *domain; /* lowercase, validated by the caller */
	const char *user;   /* lowercase, maildir_user_ok() */
};

/*
 * maildir_commit - deliver to every recipient under base (directories
 * created as needed, 0700). 0 = durable in all; -1 with err = nothing kept.
 * The message handle is freed either way and the spool file removed.
 */
int maildir_commit(struct maildir_msg **m, const char *base, const struct maildir_rcpt *rcpts,
                   size_t n, char *err, size_t errlen);
/*
 * maildir_spool_finish - make the spool file durable (fsync, close) without
 * delivering it: for a next hop (LMTP) that reads it by path. Then
 * maildir_abort() removes it once the next hop has taken the message.
 */
int maildir_spool_finish(struct maildir_msg *m, char *err, size_t errlen);
const char *maildir_spool_path(const struct maildir_msg *m);
/* maildir_spool_moved - the caller renamed the spool file elsewhere and owns
 * it now: freeing the handle no longer unlinks spool_path */
void maildir_spool_moved(struct maildir_msg *m);
/*
 * maildir_spool_fd / maildir_spool_close - the same in two steps, for a
 * group commit that fsyncs many spool files at once (common/fsyncpool.h):
 * the open descriptor (-1 if a write failed), then close with the result of
 * its fsync (0 or an errno). Returns 0, or -1 with err set. The file holds
 * exactly what was written once maildir_spool_fd returned: nothing may be
 * written after it.
 */
int maildir_spool_fd(struct maildir_msg *m);
int maildir_spool_close(struct maildir_msg *m, int sync_errno, char *err, size_t errlen);
/*
 * maildir_place_file - deliver an existing (durable) file, such as a queue
 * file, to one Maildir under base: link (or copy) into tmp/, rename into
 * new/; the final fsync of new/ is the caller's, so that a batch of
 * deliveries can fsync every new/ directory at once: *placed is the
 * file's path in new/ (free it); the delivery is durable only once the
 * directory holding *placed has been fsync'd (if that fails, unlink it).
 */
int maildir_place_file(const char *path, const char *base, const struct maildir_rcpt *r,
                       char **placed, char *err, size_t errlen);

/*
 * maildir_recycle - keep a file that is no longer needed (a delivered queue
 * file) for a later maildir_begin() in spool_dir instead of deleting it:
 * it is renamed to spool_dir/MAILDIR_RECYCLED_PREFIX<n> and written over
 * (then cut to length) when reused. Only a file with no other link is
 * taken. Returns 0 if taken, -1 if the caller must unlink path itself.
 * maildir_recycle_clear - unlink every kept file (at shutdown).
 */
#define MAILDIR_RECYCLED_PREFIX "recycled."
int maildir_recycle(const char *path, const char *spool_dir);
void maildir_recycle_clear(void);
/* maildir_abort - drop the spool file; frees and NULLs *m */
void maildir_abort(struct maildir_msg **m);

/*
 * maildir_user_ok - a local part we can use as a directory name: 1..64 of
 * [a-z0-9._+-] (lowercase), not starting with '.', not "..".
 */
int maildir_user_ok(const char *user);

#endif
