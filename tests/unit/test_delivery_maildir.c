/*
 * test_delivery_maildir - spool, commit into several Maildirs, rollback on
 * failure, abort, and the local-part rule for directory names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delivery/maildir.h"

static const char body[] = "From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n";

struct fixture {
	char root[64];
	char spool[128];
	char base[128];
};

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -1;
	snprintf(f->root, sizeof(f->root), "/tmp/test_maildir.XXXXXX");
	if (mkdtemp(f->root) == NULL)
		return -1;
	snprintf(f->spool, sizeof(f->spool), "%s/spool", f->root);
	snprintf(f->base, sizeof(f->base), "%s/mail", f->root);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	int rc = nftw(f->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

	free(f);
	return rc;
}

/* count_entries - regular entries of dir (-1 if it does not exist); name of the last */
static int count_entries(const char *dir, char *name, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (name != NULL)
			snprintf(name, len, "%s", e->d_name);
		n++;
	}
	closedir(d);
	return n;
}

static void assert_file_is_body(const char *path)
{
	char buf[256];
	FILE *fp = fopen(path, "r");
	size_t n;

	assert_non_null(fp);
	n = fread(buf, 1, sizeof(buf), fp);
	fclose(fp);
	assert_int_equal(n, sizeof(body) - 1);
	assert_memory_equal(buf, body, n);
}

static struct maildir_msg *spool_body(struct fixture *f)
{
	char err[512] = "";
	struct maildir_msg *m = maildir_begin(f->spool, err, sizeof(err));

	if (m == NULL)
		fail_msg("maildir_begin: %s", err);
	/* in pieces, as DATA arrives */
	assert_int_equal(maildir_write(m, body, 10), 0);
	assert_int_equal(maildir_write(m, body + 10, 0), 0);
	assert_int_equal(maildir_write(m, body + 10, sizeof(body) - 1 - 10), 0);
	return m;
}

static void test_two_domains(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {
	    {.domain = "example.org", .user = "alice"},
	    {.domain = "example.net", .user = "bob"},
	    {.domain = "example.org", .user = "alice"}, /* duplicate: one copy */
	};
	char err[512] = "", dir[512], name1[256], name2[256], path[1024];
	struct maildir_msg *m = spool_body(f);
	struct stat st1, st2;

	assert_int_equal(count_entries(f->spool, NULL, 0), 1);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 3, err, sizeof(err)), 0);
	assert_null(m);

	snprintf(dir, sizeof(dir), "%s/example.org/alice/new", f->base);
	assert_int_equal(count_entries(dir, name1, sizeof(name1)), 1);
	snprintf(path, sizeof(path), "%s/%s", dir, name1);
	assert_file_is_body(path);
	assert_int_equal(stat(path, &st1), 0);
	assert_int_equal(st1.st_mode & 07777, 0600);

	snprintf(dir, sizeof(dir), "%s/example.net/bob/new", f->base);
	assert_int_equal(count_entries(dir, name2, sizeof(name2)), 1);
	assert_string_equal(name1, name2);
	snprintf(path, sizeof(path), "%s/%s", dir, name2);
	assert_file_is_body(path);
	assert_int_equal(stat(path, &st2), 0);
	/* one inode shared by the hard links */
	assert_int_equal(st1.st_ino, st2.st_ino);

	/* Maildir name: <sec>.M<usec>P<pid>Q<n>.<host>, no ':' or '/' */
	char want[64];
	snprintf(want, sizeof(want), "P%ldQ", (long)getpid());
	assert_non_null(strstr(name1, ".M"));
	assert_non_null(strstr(name1, want));
	assert_null(strchr(name1, ':'));

	/* tmp/ empty, cur/ exists, directories private, spool file gone */
	snprintf(dir, sizeof(dir), "%s/example.org/alice/tmp", f->base);
	assert_int_equal(count_entries(dir, NULL, 0), 0);
	snprintf(dir, sizeof(dir), "%s/example.net/bob/tmp", f->base);
	assert_int_equal(count_entries(dir, NULL, 0), 0);
	snprintf(dir, sizeof(dir), "%s/example.net/bob/cur", f->base);
	assert_int_equal(count_entries(dir, NULL, 0), 0);
	assert_int_equal(stat(dir, &st1), 0);
	assert_int_equal(st1.st_mode & 07777, 0700);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);

	/* a second message gets a different name */
	m = spool_body(f);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)), 0);
	snprintf(dir, sizeof(dir), "%s/example.org/alice/new", f->base);
	assert_int_equal(count_entries(dir, NULL, 0), 2);
}

static void test_base_is_a_file(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {{.domain = "example.org", .user = "alice"}};
	char err[512] = "", want[512];
	struct maildir_msg *m;
	FILE *fp = fopen(f->base, "w");

	assert_non_null(fp);
	fclose(fp);
	m = spool_body(f);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)), -1);
	assert_null(m);
	snprintf(want, sizeof(want), "mkdir %s/example.org: Not a directory", f->base);
	assert_string_equal(err, want);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

static void test_rollback(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {
	    {.domain = "example.org", .user = "alice"},
	    {.domain = "example.net", .user = "bob"},
	};
	char err[512] = "", path[512];
	struct maildir_msg *m;
	FILE *fp;

	/* the second recipient's domain directory is a regular file */
	assert_int_equal(mkdir(f->base, 0700), 0);
	snprintf(path, sizeof(path), "%s/example.net", f->base);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);

	m = spool_body(f);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 2, err, sizeof(err)), -1);
	assert_null(m);
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, "Not a directory"));

	/* alice's copy was in new/ and is gone again */
	snprintf(path, sizeof(path), "%s/example.org/alice/new", f->base);
	assert_int_equal(count_entries(path, NULL, 0), 0);
	snprintf(path, sizeof(path), "%s/example.org/alice/tmp", f->base);
	assert_int_equal(count_entries(path, NULL, 0), 0);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

static void test_unwritable_maildir(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {
	    {.domain = "example.org", .user = "alice"},
	    {.domain = "example.org", .user = "carol"},
	};
	char err[512] = "", path[512];
	struct maildir_msg *m;
	FILE *fp;

	/* carol's tmp is a file: link() fails after alice is delivered */
	m = spool_body(f);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/example.org/carol", f->base);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/example.org/carol/tmp", f->base);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);

	m = spool_body(f);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 2, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "example.org/carol/tmp"));
	snprintf(path, sizeof(path), "%s/example.org/alice/new", f->base);
	assert_int_equal(count_entries(path, NULL, 0), 1); /* the first message only */
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

static void test_abort(void **state)
{
	struct fixture *f = *state;
	struct maildir_msg *m = spool_body(f);

	assert_int_equal(count_entries(f->spool, NULL, 0), 1);
	maildir_abort(&m);
	assert_null(m);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
	maildir_abort(&m); /* NULL is fine */
}

static void test_write_error_fails_commit(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {{.domain = "example.org", .user = "alice"}};
	char err[512] = "", big[8192], dir[512];
	struct maildir_msg *m;
	struct rlimit old, lim;

	/* a file size limit makes write() fail with EFBIG, like a full disk */
	m = spool_body(f);
	memset(big, 'x', sizeof(big));
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 4096;
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	int rc = maildir_write(m, big, sizeof(big));
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_DFL);
	assert_int_equal(rc, -1);
	/* remembered: later writes fail too, and so does commit */
	assert_int_equal(maildir_write(m, "x", 1), -1);
	assert_int_equal(maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)), -1);
	assert_null(m);
	assert_non_null(strstr(err, "write "));
	assert_non_null(strstr(err, f->spool));
	assert_non_null(strstr(err, "File too large"));
	snprintf(dir, sizeof(dir), "%s/example.org/alice/new", f->base);
	assert_true(count_entries(dir, NULL, 0) <= 0);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

/* write_file - path with n bytes of c (and a second name, link, if not NULL) */
static void write_file(const char *path, char c, size_t n, const char *link_to)
{
	char buf[512];
	FILE *fp = fopen(path, "w");

	assert_non_null(fp);
	assert_true(n <= sizeof(buf));
	memset(buf, c, n);
	assert_int_equal(fwrite(buf, 1, n, fp), n);
	assert_int_equal(fclose(fp), 0);
	if (link_to != NULL)
		assert_int_equal(link(path, link_to), 0);
}

/*
 * A delivered body kept for reuse (maildir_recycle): the next message is
 * written over it and holds exactly its own bytes, not the tail of the old
 * one; a file with a second name (a Maildir link) is never taken; clear
 * removes what is kept.
 */
static void test_recycle(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {{.domain = "example.org", .user = "alice"}};
	char err[512] = "", old[256], linked[256], other[256], dir[512], name[256], path[1024];
	struct maildir_msg *m;

	assert_int_equal(mkdir(f->spool, 0700), 0);
	snprintf(old, sizeof(old), "%s/old", f->root);
	write_file(old, 'Z', 400, NULL); /* longer than the next message */
	assert_int_equal(maildir_recycle(old, f->spool), 0);
	assert_int_equal(access(old, F_OK), -1);
	assert_int_equal(count_entries(f->spool, name, sizeof(name)), 1);
	assert_int_equal(strncmp(name, MAILDIR_RECYCLED_PREFIX, strlen(MAILDIR_RECYCLED_PREFIX)),
	                 0);

	/* reused in place: still one spool entry while the message arrives */
	m = spool_body(f);
	assert_int_equal(count_entries(f->spool, NULL, 0), 1);
	if (maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)) < 0)
		fail_msg("maildir_commit: %s", err);
	snprintf(dir, sizeof(dir), "%s/example.org/alice/new", f->base);
	assert_int_equal(count_entries(dir, name, sizeof(name)), 1);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_file_is_body(path); /* cut to its length: nothing of the 400 'Z' left */
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);

	/* a file with another name is not taken (reuse would change the mailbox's copy) */
	snprintf(linked, sizeof(linked), "%s/linked", f->root);
	snprintf(other, sizeof(other), "%s/other-name", f->root);
	write_file(linked, 'L', 10, other);
	assert_int_equal(maildir_recycle(linked, f->spool), -1);
	assert_int_equal(access(linked, F_OK), 0);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);

	/* clear: whatever is kept is unlinked */
	assert_int_equal(unlink(other), 0);
	assert_int_equal(maildir_recycle(linked, f->spool), 0);
	assert_int_equal(count_entries(f->spool, NULL, 0), 1);
	maildir_recycle_clear();
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
	/* and a message after that makes a new file again */
	m = spool_body(f);
	assert_int_equal(count_entries(f->spool, NULL, 0), 1);
	maildir_abort(&m);
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

/* spool and Maildirs on different file systems: link() gives EXDEV, copy */
static void test_cross_device_copy(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {
	    {.domain = "example.org", .user = "alice"},
	    {.domain = "example.net", .user = "bob"},
	};
	char err[512] = "", spool[64] = "/dev/shm/test_maildir.XXXXXX", dir[512], name[256],
	     path[1024];
	struct stat a, b;
	struct maildir_msg *m;

	if (stat("/dev/shm", &a) < 0 || stat(f->root, &b) < 0 || a.st_dev == b.st_dev ||
	    mkdtemp(spool) == NULL)
		skip();
	m = maildir_begin(spool, err, sizeof(err));
	assert_non_null(m);
	assert_int_equal(maildir_write(m, body, sizeof(body) - 1), 0);
	int rc = maildir_commit(&m, f->base, rcpts, 2, err, sizeof(err));
	assert_int_equal(count_entries(spool, NULL, 0), 0);
	rmdir(spool);
	if (rc < 0)
		fail_msg("maildir_commit: %s", err);
	snprintf(dir, sizeof(dir), "%s/example.net/bob/new", f->base);
	assert_int_equal(count_entries(dir, name, sizeof(name)), 1);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	assert_file_is_body(path);
	assert_int_equal(stat(path, &a), 0);
	assert_int_equal(a.st_mode & 07777, 0600);
	snprintf(dir, sizeof(dir), "%s/example.net/bob/tmp", f->base);
	assert_int_equal(count_entries(dir, NULL, 0), 0);
}

static void test_bad_recipient(void **state)
{
	struct fixture *f = *state;
	const struct maildir_rcpt rcpts[] = {{.domain = "..", .user = "alice"}};
	char err[512] = "";
	struct maildir_msg *m = spool_body(f);

	assert_int_equal(maildir_commit(&m, f->base, rcpts, 1, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "unusable recipient"));
	assert_int_equal(count_entries(f->spool, NULL, 0), 0);
}

static void test_user_ok(void **state)
{
	char longname[66];

	(void)state;
	assert_false(maildir_user_ok(""));
	assert_false(maildir_user_ok(".x"));
	assert_false(maildir_user_ok("."));
	assert_false(maildir_user_ok(".."));
	assert_false(maildir_user_ok("a/b"));
	assert_false(maildir_user_ok("A"));
	assert_false(maildir_user_ok("a b"));
	assert_false(maildir_user_ok("a:b"));
	assert_false(maildir_user_ok("\xc3\xa9"));
	memset(longname, 'a', 65);
	longname[65] = '\0';
	assert_false(maildir_user_ok(longname));
	longname[64] = '\0';
	assert_true(maildir_user_ok(longname));
	assert_true(maildir_user_ok("ok.name+tag-1"));
	assert_true(maildir_user_ok("a_b"));
	assert_true(maildir_user_ok("x"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_two_domains, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_base_is_a_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rollback, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unwritable_maildir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_recycle, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_write_error_fails_commit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cross_device_copy, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_recipient, setup, teardown),
	    cmocka_unit_test(test_user_ok),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
