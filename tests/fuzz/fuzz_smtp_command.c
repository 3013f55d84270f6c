/*
 * fuzz_smtp_command - libFuzzer target for smtp/command.h: the input is one
 * command line (as smtp/line would hand it over, but any bytes are allowed)
 * and goes through the verb split and every argument parser, with both
 * SMTPUTF8 settings. Checks that results stay inside their buffers and that
 * no rendered reply can be split (RFC 5321 §4.2).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtp/command.h"
#include "smtp/reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
	do {                                                                                       \
		if (!(x))                                                                          \
			abort();                                                                   \
	} while (0)

static void check_reply(const struct smtp_reply *r)
{
	char buf[SMTP_REPLY_TEXT_MAX + 64];
	size_t n;

	CHECK(r->code >= 500 && r->code <= 599);
	n = smtp_reply_format(r, buf, sizeof(buf));
	CHECK(n > 0);
	/* exactly one CRLF, at the end */
	CHECK(buf[n - 2] == '\r' && buf[n - 1] == '\n');
	CHECK(memchr(buf, '\r', n - 2) == NULL && memchr(buf, '\n', n - 2) == NULL);
}

static void check_path(const struct smtp_path *p)
{
	size_t al = strnlen(p->addr, sizeof(p->addr));
	size_t ll = strnlen(p->local, sizeof(p->local));
	size_t dl = strnlen(p->domain, sizeof(p->domain));

	CHECK(al < sizeof(p->addr) && ll < sizeof(p->local) && dl < sizeof(p->domain));
	CHECK(strpbrk(p->addr, "\r\n") == NULL);
	CHECK(!p->null_path || al == 0);
	CHECK(p->null_path || al > 0);
	CHECK(al <= SMTP_PATH_MAX - 2);
	CHECK(dl <= SMTP_DOMAIN_MAX);
}

static void run(const char *s, size_t n)
{
	struct smtp_path path;
	struct smtp_mail_params mp;
	struct smtp_reply err;
	uint64_t size;
	bool last;

	memset(&err, 0, sizeof(err));
	if (smtp_parse_mail(s, n, 0, &path, &mp, &err) == 0) {
		check_path(&path);
		CHECK(!path.utf8 || mp.smtputf8);
	} else {
		check_reply(&err);
	}
	memset(&err, 0, sizeof(err));
	if (smtp_parse_mail(s, n, 1000000, &path, &mp, &err) == 0)
		CHECK(!mp.size_set || mp.size <= 1000000);
	else
		check_reply(&err);
	for (int u = 0; u < 2; u++) {
		memset(&err, 0, sizeof(err));
		if (smtp_parse_rcpt(s, n, u, &path, &err) == 0) {
			check_path(&path);
			CHECK(!path.null_path);
			CHECK(u || !path.utf8);
		} else {
			check_reply(&err);
		}
	}
	memset(&err, 0, sizeof(err));
	if (smtp_parse_bdat(s, n, &size, &last, &err) == 0)
		CHECK(size < UINT64_C(1000000000000000000));
	else
		check_reply(&err);
	memset(&err, 0, sizeof(err));
	if (smtp_parse_helo(s, n, &err) != 0)
		check_reply(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct smtp_cmd cmd;

	smtp_cmd_parse(line, size, &cmd);
	CHECK(cmd.arg >= line && cmd.arg + cmd.arg_len <= line + size);
	CHECK(cmd.arg_len == 0 || cmd.arg[cmd.arg_len - 1] != ' ');
	CHECK(smtp_verb_name(cmd.verb) != NULL);
	/* the argument as the session would pass it, and the raw line */
	run(cmd.arg, cmd.arg_len);
	run(line, size);
	return 0;
}
