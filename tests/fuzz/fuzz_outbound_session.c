/*
 * fuzz_outbound_session - a whole outbound (client) SMTP session driven
 * from the server's bytes.
 *
 * Byte 0 chooses how the rest is used:
 *   bits 0-3  read size: 0 = everything in one read, else 1..15 bytes
 *   bit 4     require_tls off (the test-only plaintext path)
 *   bit 5     the handshake "fails" (tls_failed) instead of succeeding
 *   bit 6     the I/O layer times out when the script runs dry (else EOF)
 * Byte 1 (low 6 bits) is the length of the message body, taken next; the
 * rest is what the server sends. The simulated I/O layer does what the
 * real one will: on STARTTLS it reports the handshake, on SEND_BODY it
 * streams the body through outbound_body_stuff() (cut in two at a place
 * chosen by the data) and calls body_done(), on DONE/CLOSE it stops.
 *
 * Checked on every run (abort() on failure):
 *  - with require_tls, nothing but EHLO, STARTTLS and QUIT is written
 *    before tls_started(): never "MAIL FROM";
 *  - STARTTLS is only raised with no unread byte after the 220;
 *  - input is never over-consumed, nothing is consumed while an action is
 *    pending or after DONE/CLOSE;
 *  - commands are whole CRLF lines; the stuffed body is canonical, does not
 *    depend on where it was cut, and "\r\n.\r\n" occurs once: at the end;
 *  - the session always ends (DONE or CLOSE) once the server is gone, and
 *    a host error goes with CLOSE.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "outbound/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const rcpts[] = {"a@y.example", "b@y.example", "c@y.example"};

static void check(bool ok)
{
	if (!ok)
		abort();
}

struct fuzz {
	struct outbound_session *s;
	bool require_tls;
	bool tls_fail;
	bool tls;
	const uint8_t *body;
	size_t body_len;
	size_t cut;
};

/* commands: whole lines; before TLS only EHLO, STARTTLS, QUIT (when required) */
static void check_commands(const struct fuzz *f, const char *o, size_t n)
{
	size_t i = 0;

	check(n == 0 || (n >= 2 && o[n - 2] == '\r' && o[n - 1] == '\n'));
	while (i < n) {
		const char *line = o + i;
		const char *lf = memchr(line, '\n', n - i);
		size_t ll;

		check(lf != NULL && lf > line && lf[-1] == '\r');
		ll = (size_t)(lf - line) + 1;
		check(memchr(line, '\r', ll - 2) == NULL);
		if (f->require_tls && !f->tls) {
			check((ll > 5 && memcmp(line, "EHLO ", 5) == 0) ||
			      (ll == 10 && memcmp(line, "STARTTLS\r\n", 10) == 0) ||
			      (ll == 6 && memcmp(line, "QUIT\r\n", 6) == 0));
			check(!(ll >= 9 && memcmp(line, "MAIL FROM", 9) == 0));
		}
		i += ll;
	}
}

static void drain(struct fuzz *f)
{
	size_t n;
	const char *o = outbound_session_output(f->s, &n);

	check_commands(f, o, n);
	outbound_session_output_clear(f->s);
}

/* send_body - stuff the body in two pieces, compare with one piece */
static void send_body(struct fuzz *f)
{
	struct outbound_stuffer a, b;
	char one[OUTBOUND_STUFF_MAX(64) + 8], two[OUTBOUND_STUFF_MAX(64) * 2 + 8];
	char wire[sizeof(one) + 8];
	size_t n1, n2, cut = f->body_len ? f->cut % (f->body_len + 1) : 0, w = 0, count = 0;
	const char *in = (const char *)f->body;

	outbound_stuffer_init(&a);
	n1 = outbound_body_stuff(&a, in, f->body_len, one, sizeof(one));
	n1 += outbound_body_stuff_end(&a, one + n1, sizeof(one) - n1);
	outbound_stuffer_init(&b);
	n2 = outbound_body_stuff(&b, in, cut, two, OUTBOUND_STUFF_MAX(cut));
	n2 += outbound_body_stuff(&b, in + cut, f->body_len - cut, two + n2,
	                          OUTBOUND_STUFF_MAX(f->body_len - cut));
	n2 += outbound_body_stuff_end(&b, two + n2, 2);
	check(n1 == n2 && memcmp(one, two, n1) == 0);
	/* canonical: CR only before LF, LF only after CR, no NUL, ends in CRLF */
	for (size_t i = 0; i < n1; i++) {
		check(one[i] != '\0');
		if (one[i] == '\r')
			check(i + 1 < n1 && one[i + 1] == '\n');
		if (one[i] == '\n')
			check(i > 0 && one[i - 1] == '\r');
	}
	check(n1 == 0 || one[n1 - 1] == '\n');
	/* as on the wire: the CRLF of DATA, the body, the terminator */
	wire[w++] = '\r';
	wire[w++] = '\n';
	memcpy(wire + w, one, n1);
	w += n1;
	memcpy(wire + w, ".\r\n", 3);
	w += 3;
	for (size_t i = 0; i + 5 <= w; i++)
		if (memcmp(wire + i, "\r\n.\r\n", 5) == 0)
			count++;
	check(count == 1 && memcmp(wire + w - 5, "\r\n.\r\n", 5) == 0);
	outbound_session_body_done(f->s);
}

/* act - carry out pending actions; false once the session is over */
static bool act(struct fuzz *f, size_t unread)
{
	for (;;) {
		enum outbound_action a = outbound_session_action(f->s);

		drain(f);
		if (a == OUTBOUND_NONE)
			return true;
		/* nothing is consumed while an action is pending */
		check(outbound_session_input(f->s, "250 x\r\n", 7) == 0);
		switch (a) {
		case OUTBOUND_STARTTLS:
			check(unread == 0);
			check(!f->tls);
			if (f->tls_fail) {
				outbound_session_tls_failed(f->s, "certificate is self-signed");
				check(outbound_session_action(f->s) == OUTBOUND_CLOSE);
				break;
			}
			f->tls = true;
			outbound_session_tls_started(f->s);
			check(outbound_session_tls_active(f->s));
			break;
		case OUTBOUND_SEND_BODY:
			check(f->tls || !f->require_tls);
			send_body(f);
			break;
		case OUTBOUND_DONE:
		case OUTBOUND_CLOSE:
			return false;
		case OUTBOUND_NONE:
			break;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool quiet;
	struct outbound_params p;
	struct fuzz f;
	char *pend = NULL;
	size_t plen = 0, off = 2, chunk;
	bool running = true, timeout;
	const char *reason;
	bool temporary;

	if (!quiet) {
		log_init("fuzz", false, LOG_LVL_ERR);
		quiet = true;
	}
	if (size < 2)
		return 0;
	memset(&f, 0, sizeof(f));
	chunk = data[0] & 15;
	f.require_tls = !(data[0] & 16);
	f.tls_fail = (data[0] & 32) != 0;
	timeout = (data[0] & 64) != 0;
	f.body_len = data[1] & 63;
	if (f.body_len > size - off)
		f.body_len = size - off;
	f.body = data + off;
	f.cut = data[1] >> 6 ? (size_t)data[1] : f.body_len / 2;
	off += f.body_len;

	memset(&p, 0, sizeof(p));
	p.helo_name = "client.example";
	p.mx_host = "mx.y.example";
	p.sender = "s@x.example";
	p.rcpts = rcpts;
	p.n_rcpts = 3;
	p.size = 1234;
	p.body_8bit = (data[0] & 128) != 0;
	p.require_tls = f.require_tls;
	p.id = 7;
	f.s = outbound_session_new(&p);

	while (running && off < size) {
		size_t n = chunk == 0 ? size - off : chunk;
		size_t used;

		if (n > size - off)
			n = size - off;
		pend = realloc(pend, plen + n);
		check(pend != NULL);
		memcpy(pend + plen, data + off, n);
		plen += n;
		off += n;
		used = outbound_session_input(f.s, pend, plen);
		check(used <= plen);
		memmove(pend, pend + used, plen - used);
		plen -= used;
		/* the I/O layer feeds what is left after each action */
		while ((running = act(&f, plen))) {
			if (plen == 0)
				break;
			used = outbound_session_input(f.s, pend, plen);
			check(used <= plen);
			if (used == 0)
				break;
			memmove(pend, pend + used, plen - used);
			plen -= used;
		}
		/* a reply line never grows without bound in the I/O buffer */
		if (running)
			check(plen < OUTBOUND_LINE_MAX);
	}
	if (running) {
		if (timeout)
			outbound_session_timeout(f.s);
		else
			outbound_session_eof(f.s);
		running = act(&f, 0);
	}
	/* the server is gone: the session has ended */
	check(!running);
	check(outbound_session_input(f.s, "250 x\r\n", 7) == 0);
	if (outbound_session_host_error(f.s, &reason, &temporary)) {
		check(outbound_session_action(f.s) == OUTBOUND_CLOSE);
		check(reason != NULL && *reason != '\0');
	} else {
		check(outbound_session_action(f.s) == OUTBOUND_DONE);
	}
	for (size_t i = 0; i < 3; i++) {
		const struct outbound_result *r = outbound_session_result(f.s, i);
		check(r != NULL && r->state <= OUTBOUND_RCPT_DEFERRED);
		if (r->state == OUTBOUND_RCPT_DELIVERED)
			check(f.tls || !f.require_tls);
	}
	check(outbound_session_result(f.s, 3) == NULL);
	outbound_session_free(&f.s);
	free(pend);
	return 0;
}
