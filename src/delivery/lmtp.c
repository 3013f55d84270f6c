/*
 * delivery/lmtp - LMTP client (RFC 2033) on libevent; see lmtp.h.
 *
 * One command at a time (no pipelining): this is a local hop, the latency
 * is small and the replies are easier to attribute. Every step has a timeout
 * and every reply is bounded (smtp/replyparse).
 */
#include "delivery/lmtp.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "smtp/replyparse.h"

#define LMTP_LINE_MAX 4096
#define LMTP_OUT_LOW  ((size_t)64 * 1024)

enum lmtp_state { L_GREETING, L_LHLO, L_MAIL, L_RCPT, L_DATA, L_BODY, L_DOT, L_QUIT };

struct lmtp_job {
	struct event_base *base;
	struct bufferevent *bev;
	enum lmtp_state state;
	char *lhlo, *from;
	char **rcpts;
	size_t n_rcpts, next_rcpt, accepted, replies;
	struct smtp_reply *res; /* per recipient; code 0 = no answer yet */
	size_t *acc;            /* indices of the accepted recipients, in order */
	int fd;
	bool at_bol; /* body: at the beginning of a line */
	unsigned timeout;
	unsigned long long sid;
	struct smtp_reply_parser rp;
	lmtp_done_fn done;
	void *arg;
};

static void job_free(struct lmtp_job *j)
{
	if (j->bev)
		bufferevent_free(j->bev);
	if (j->fd >= 0)
		close(j->fd);
	for (size_t i = 0; i < j->n_rcpts; i++)
		free(j->rcpts[i]);
	free(j->rcpts);
	free(j->res);
	free(j->acc);
	free(j->lhlo);
	free(j->from);
	free(j);
}

/* finish - report every recipient and free; unanswered ones get why */
static int finish(struct lmtp_job *j, const char *why)
{
	lmtp_done_fn done = j->done;
	void *arg = j->arg;
	size_t n = j->n_rcpts;
	struct smtp_reply *res = j->res;
	j->res = NULL;
	for (size_t i = 0; i < n; i++)
		if (res[i].code == 0)
			smtp_reply_set(&res[i], 451, "4.4.0", "local delivery failed: %s",
			               why ? why : "no answer");
	job_free(j);
	done(arg, res, n);
	free(res);
	return 0;
}

static int fail_temp(struct lmtp_job *j, const char *what)
{
	log_warn("event=lmtp_error sid=%016llx error=\"%s\"", j->sid, what);
	return finish(j, what);
}

static void send_line(struct lmtp_job *j, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void send_line(struct lmtp_job *j, const char *fmt, ...)
{
	va_list ap;
	struct evbuffer *out = bufferevent_get_output(j->bev);
	va_start(ap, fmt);
	evbuffer_add_vprintf(out, fmt, ap);
	va_end(ap);
	evbuffer_add(out, "\r\n", 2);
}

/* pump_body - dot-stuff the content into the output, up to the low mark */
static int pump_body(struct lmtp_job *j)
{
	struct evbuffer *out = bufferevent_get_output(j->bev);
	char in[16384], stuffed[2 * sizeof(in)];
	while (evbuffer_get_length(out) < LMTP_OUT_LOW) {
		ssize_t n = read(j->fd, in, sizeof(in));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail_temp(j, "read spool file");
		if (n == 0) {
			/* RFC 5321 §4.5.2: the content ends with CRLF, then ".\r\n" */
			if (!j->at_bol)
				evbuffer_add(out, "\r\n", 2);
			evbuffer_add(out, ".\r\n", 3);
			close(j->fd);
			j->fd = -1;
			j->state = L_DOT;
			return 1;
		}
		size_t o = 0;
		for (ssize_t i = 0; i < n; i++) {
			if (j->at_bol && in[i] == '.')
				stuffed[o++] = '.';
			stuffed[o++] = in[i];
			j->at_bol = in[i] == '\n';
		}
		evbuffer_add(out, stuffed, o);
	}
	return 1;
}

static int next_rcpt_or_data(struct lmtp_job *j)
{
	if (j->next_rcpt < j->n_rcpts) {
		j->state = L_RCPT;
		send_line(j, "RCPT TO:<%s>", j->rcpts[j->next_rcpt++]);
		return 1;
	}
	if (j->accepted == 0)
		return finish(j, NULL);
	j->state = L_DATA;
	send_line(j, "DATA");
	return 1;
}

/* on_reply - one complete reply in the current state; 0 = the job is gone */
static int on_reply(struct lmtp_job *j, const struct smtp_reply *r)
{
	switch (j->state) {
	case L_GREETING:
		if (r->code != 220)
			return fail_temp(j, "greeting refused");
		j->state = L_LHLO;
		send_line(j, "LHLO %s", j->lhlo);
		return 1;
	case L_LHLO:
		if (r->code != 250)
			return fail_temp(j, "LHLO refused");
		j->state = L_MAIL;
		send_line(j, "MAIL FROM:<%s>", j->from);
		return 1;
	case L_MAIL:
		if (r->code != 250)
			return fail_temp(j, "MAIL refused");
		return next_rcpt_or_data(j);
	case L_RCPT:
		if (r->code == 250 || r->code == 251)
			j->acc[j->accepted++] = j->next_rcpt - 1;
		else
			j->res[j->next_rcpt - 1] = *r;
		return next_rcpt_or_data(j);
	case L_DATA:
		if (r->code != 354)
			return fail_temp(j, "DATA refused");
		j->state = L_BODY;
		j->at_bol = true;
		return pump_body(j);
	case L_BODY:
		return fail_temp(j, "reply during message content");
	case L_DOT:
		/* RFC 2033 §4.2: one reply per accepted recipient, in order */
		j->res[j->acc[j->replies]] = *r;
		if (++j->replies < j->accepted)
			return 1;
		j->state = L_QUIT;
		send_line(j, "QUIT");
		return finish(j, NULL);
	case L_QUIT:
		return 1;
	}
	return 1;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_job *j = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		size_t len;
		char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
		if (line == NULL) {
			if (evbuffer_get_length(in) > LMTP_LINE_MAX)
				fail_temp(j, "reply line too long");
			return;
		}
		enum smtp_rp_status st = smtp_reply_parser_line(&j->rp, line, len);
		free(line);
		if (st == SMTP_RP_ERROR) {
			fail_temp(j, "malformed reply");
			return;
		}
		if (st == SMTP_RP_DONE) {
			struct smtp_reply r = j->rp.r;
			smtp_reply_parser_init(&j->rp);
			if (!on_reply(j, &r))
				return; /* finished: the job is freed */
		}
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_job *j = arg;
	if (j->state == L_BODY)
		(void)pump_body(j);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct lmtp_job *j = arg;
	if (what & BEV_EVENT_CONNECTED)
		return;
	fail_temp(j, what & BEV_EVENT_TIMEOUT ? "timeout" : "connection lost");
}

struct lmtp_job *lmtp_deliver(struct event_base *base, const struct lmtp_request *req,
                              lmtp_done_fn done, void *arg)
{
	struct lmtp_job *j = xcalloc(1, sizeof(*j));
	j->base = base;
	j->fd = -1;
	j->done = done;
	j->arg = arg;
	j->timeout = req->timeout;
	j->sid = req->sid;
	j->lhlo = xstrdup(req->lhlo_name);
	j->from = xstrdup(req->from);
	j->rcpts = xcalloc(req->n_rcpts, sizeof(*j->rcpts));
	for (size_t i = 0; i < req->n_rcpts; i++)
		j->rcpts[i] = xstrdup(req->rcpts[i]);
	j->n_rcpts = req->n_rcpts;
	j->res = xcalloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(*j->res));
	j->acc = xcalloc(req->n_rcpts ? req->n_rcpts : 1, sizeof(*j->acc));
	smtp_reply_parser_init(&j->rp);

	j->fd = open(req->spool_path, O_RDONLY | O_CLOEXEC);
	char host[64], port[8];
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char spec[128];
	if (j->fd < 0 ||
	    config_parse_hostport(req->hostport, host, sizeof(host), port, sizeof(port)) < 0) {
		job_free(j);
		return NULL;
	}
	snprintf(spec, sizeof(spec), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) < 0) {
		job_free(j);
		return NULL;
	}
	j->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(j->bev, read_cb, write_cb, event_cb, j);
	struct timeval tv = {.tv_sec = j->timeout};
	bufferevent_set_timeouts(j->bev, &tv, &tv);
	bufferevent_enable(j->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(j->bev, (struct sockaddr *)&ss, sslen) < 0) {
		job_free(j);
		return NULL;
	}
	return j;
}

void lmtp_cancel(struct lmtp_job **jp)
{
	if (*jp) {
		job_free(*jp);
		*jp = NULL;
	}
}
