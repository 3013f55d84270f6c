/*
 * fuzz_inbound_session - a whole inbound SMTP session driven from bytes.
 *
 * Byte 0 chooses the configuration and how the rest is cut into reads:
 *   bit 0  require_tls          bit 1  tls_available
 *   bit 2  info_url set         bit 3  the sink's begin fails every 3rd time
 *   bits 4-7  read size: 0 = everything in one read, else 1..15 bytes
 * The rest is what the client sends. The simulated I/O layer does what
 * inbound/server.c does: on STARTTLS it refuses pending plaintext (closes)
 * or reports a successful handshake; on STORE it commits, alternately
 * succeeding and failing with 451; on CLOSE it stops.
 *
 * Checked on every run (abort() on failure):
 *  - the output is only complete reply lines "DDD[ -]text\r\n";
 *  - with require_tls, nothing reaches the sink before the handshake;
 *  - a stored envelope has recipients and its size is what the sink got;
 *  - input is never over-consumed, nothing is consumed while an action is
 *    pending, and nothing happens after CLOSE.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "inbound/session.h"
#include "smtp/reply.h"

#define SINK_KEEP ((size_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fsink {
	unsigned char *keep; /* the first SINK_KEEP octets; the rest is counted only */
	uint64_t len;
	bool open;
	bool flaky;
	bool gated; /* require_tls and no handshake yet: nothing may begin */
	unsigned begins;
};

struct fuzz {
	struct inbound_session *s;
	struct fsink sink;
	bool require_tls;
	bool tls;
	bool closed;
	unsigned stores;
	char *pend;
	size_t pend_len, pend_cap;
};

static void check(bool ok)
{
	if (!ok)
		abort();
}

static int fs_begin(void *ctx)
{
	struct fsink *k = ctx;

	check(!k->open);
	check(!k->gated);
	if (k->flaky && ++k->begins % 3 == 0)
		return -1;
	k->len = 0;
	k->open = true;
	return 0;
}

static void fs_write(void *ctx, const void *p, size_t n)
{
	struct fsink *k = ctx;

	check(k->open);
	if (k->len < SINK_KEEP) {
		size_t room = SINK_KEEP - (size_t)k->len;
		memcpy(k->keep + k->len, p, n < room ? n : room);
	}
	k->len += n;
}

static void fs_abort(void *ctx)
{
	struct fsink *k = ctx;

	check(k->open);
	k->open = false;
}

/* every reply line is "DDD" SP-or-"-" text CRLF, with no other CR or LF */
static void check_output(const char *o, size_t n)
{
	size_t i = 0;

	while (i < n) {
		const char *eol = memchr(o + i, '\n', n - i);
		size_t len;

		check(eol != NULL);
		len = (size_t)(eol - (o + i)) + 1;
		check(len >= 6);
		check(o[i] >= '2' && o[i] <= '5');
		check(o[i + 1] >= '0' && o[i + 1] <= '9' && o[i + 2] >= '0' && o[i + 2] <= '9');
		check(o[i + 3] == ' ' || o[i + 3] == '-');
		check(o[i + len - 2] == '\r');
		check(memchr(o + i, '\r', len - 2) == NULL);
		i += len;
	}
}

static void collect(struct fuzz *f)
{
	size_t n;
	const char *o = inbound_session_output(f->s, &n);

	check_output(o, n);
	inbound_session_output_clear(f->s);
}

static void store(struct fuzz *f)
{
	struct inbound_envelope env;

	inbound_session_envelope(f->s, &env);
	check(f->sink.open);
	check(!f->require_tls || f->tls);
	check(env.n_rcpts >= 1 && env.rcpts != NULL && env.from != NULL);
	check(env.size == f->sink.len);
	check(env.tls == f->tls);
	check(f->sink.len < 10 || memcmp(f->sink.keep, "Received: from ", 10) == 0);
	f->sink.open = false;
	if (f->stores++ % 2 == 0) {
		inbound_session_store_done(f->s, NULL);
	} else {
		struct smtp_reply r;
		smtp_reply_set(&r, 451, "4.3.0", "Error: queue file write error");
		inbound_session_store_done(f->s, &r);
	}
}

static void pump(struct fuzz *f)
{
	while (!f->closed) {
		size_t used = inbound_session_input(f->s, f->pend, f->pend_len);

		check(used <= f->pend_len);
		memmove(f->pend, f->pend + used, f->pend_len - used);
		f->pend_len -= used;
		collect(f);
		switch (inbound_session_action(f->s)) {
		case INBOUND_NONE:
			return;
		case INBOUND_STARTTLS:
			check(!f->tls);
			/* a pending action consumes nothing */
			if (f->pend_len > 0) {
				check(inbound_session_input(f->s, f->pend, f->pend_len) == 0);
				/* plaintext after STARTTLS: the I/O layer closes */
				f->closed = true;
				return;
			}
			f->tls = true;
			f->sink.gated = false;
			inbound_session_tls_started(f->s, "TLSv1.3 with cipher "
			                                  "TLS_AES_256_GCM_SHA384 (256/256 bits)");
			break;
		case INBOUND_STORE:
			if (f->pend_len > 0)
				check(inbound_session_input(f->s, f->pend, f->pend_len) == 0);
			store(f);
			break;
		case INBOUND_CLOSE:
			check(inbound_session_input(f->s, "QUIT\r\n", 6) == 0);
			f->closed = true;
			return;
		case INBOUND_DELAY:
			/* a pending delay consumes nothing */
			if (f->pend_len > 0)
				check(inbound_session_input(f->s, f->pend, f->pend_len) == 0);
			inbound_session_delay_done(f->s);
			break;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned char keep[SINK_KEEP];
	struct strlist domains = {0};
	struct inbound_params p;
	struct fuzz f;
	size_t step, pos = 1;

	if (size < 1)
		return 0;
	log_set_level(LOG_LVL_ERR);
	memset(&f, 0, sizeof(f));
	memset(&p, 0, sizeof(p));
	strlist_add(&domains, "example.org");
	strlist_add(&domains, "example.com");
	f.require_tls = data[0] & 1;
	f.sink.keep = keep;
	f.sink.flaky = data[0] & 8;
	f.sink.gated = f.require_tls;
	step = data[0] >> 4;

	p.hostname = "mx.test.example";
	p.info_url = (data[0] & 4) ? "https://example.org/tls" : NULL;
	p.require_tls = f.require_tls;
	p.tls_available = data[0] & 2;
	p.local_domains = &domains;
	p.line_max = 512;
	p.text_line_max = 1000;
	p.size_max = 4096;
	p.rcpt_max = 5;
	p.errors_max = 10;
	p.errors_delay_after = 5; /* the tarpit's held replies */
	p.header_max = 2048;      /* under size_max: both refusals are reachable */
	p.peer_ip = "192.0.2.1";
	p.id = 0x1234;
	p.sink.ctx = &f.sink;
	p.sink.begin = fs_begin;
	p.sink.write = fs_write;
	p.sink.abort = fs_abort;

	f.s = inbound_session_new(&p);
	inbound_session_greet(f.s);
	collect(&f);
	f.pend_cap = size;
	f.pend = malloc(f.pend_cap);
	check(f.pend != NULL);
	while (pos < size && !f.closed) {
		size_t n = step ? step : size - pos;
		if (n > size - pos)
			n = size - pos;
		memcpy(f.pend + f.pend_len, data + pos, n);
		f.pend_len += n;
		pos += n;
		pump(&f);
	}
	if (!f.closed) {
		/* the peer went quiet: the timer fires */
		inbound_session_timeout(f.s);
		collect(&f);
		check(inbound_session_action(f.s) == INBOUND_CLOSE);
	}
	check(!f.require_tls || f.tls || f.stores == 0);
	inbound_session_free(&f.s);
	check(f.s == NULL);
	/* whatever was open was committed or aborted */
	check(!f.sink.open);
	free(f.pend);
	strlist_free(&domains);
	return 0;
}
