/*
 * policy/fetch - the MTA-STS policy fetch on the event loop (see fetch.h).
 *
 * Why the multi interface and not a thread: the planner, the DNS resolver
 * and the SMTP sessions all live on one loop per thread without locks; a
 * curl multi handle fits that model exactly (curl tells us which sockets and
 * which timeout to watch), where a worker thread would need its own
 * hand-off and cancellation protocol.
 */
#include "policy/fetch.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "policy/mtasts.h"

#define FETCH_TIMEOUT_MS 10000 /* the whole transfer */
#define FETCH_CONNECT_MS 5000

struct policy_fetch {
	struct policy_fetcher *f;
	CURL *easy;
	struct curl_slist *resolve;
	char *body;
	size_t len;
	bool too_large;
	policy_fetch_cb cb;
	void *arg;
	char errbuf[CURL_ERROR_SIZE];
	struct policy_fetch *prev, *next;
};

struct policy_fetcher {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	char *ca_file;
	struct policy_fetch *head;
};

/* one per socket curl asks us to watch */
struct sock {
	curl_socket_t fd;
	struct event *ev;
	struct policy_fetcher *f;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void fetch_unlink(struct policy_fetch *q)
{
	if (q->prev != NULL)
		q->prev->next = q->next;
	else
		q->f->head = q->next;
	if (q->next != NULL)
		q->next->prev = q->prev;
	q->prev = q->next = NULL;
}

static void fetch_destroy(struct policy_fetch *q)
{
	curl_multi_remove_handle(q->f->multi, q->easy);
	curl_easy_cleanup(q->easy);
	curl_slist_free_all(q->resolve);
	free(q->body);
	free(q);
}

/* text/plain, with any parameters ("text/plain; charset=utf-8") */
static bool content_type_ok(const char *ct)
{
	size_t n = sizeof("text/plain") - 1;

	if (ct == NULL || strncasecmp(ct, "text/plain", n) != 0)
		return false;
	return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

static void fetch_done(struct policy_fetch *q, CURLcode rc)
{
	char err[CURL_ERROR_SIZE + 64];
	const char *error = NULL;
	long code = 0;
	char *ct = NULL;

	curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_getinfo(q->easy, CURLINFO_CONTENT_TYPE, &ct);
	if (code >= 300 && code < 400) {
		/* RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed" */
		snprintf(err, sizeof(err), "HTTP %ld: redirects are not followed", code);
		error = err;
	} else if (q->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
		error = "policy larger than 64 KiB";
	} else if (rc != CURLE_OK) {
		snprintf(err, sizeof(err), "%s", q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc));
		error = err;
	} else if (code != 200) {
		snprintf(err, sizeof(err), "HTTP %ld", code);
		error = err;
	} else if (!content_type_ok(ct)) {
		/* RFC 8461 §3.3: the media type is "text/plain" */
		snprintf(err, sizeof(err), "Content-Type is not text/plain (%s)",
		         ct != NULL ? ct : "none");
		error = err;
	}
	fetch_unlink(q);
	q->cb(q->arg, error == NULL ? (q->body != NULL ? q->body : "") : NULL,
	      error == NULL ? q->len : 0, error);
	fetch_destroy(q);
}

static void check_done(struct policy_fetcher *f)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(f->multi, &left)) != NULL) {
		struct policy_fetch *q = NULL;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
		if (q != NULL)
			fetch_done(q, m->data.result);
	}
}

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct policy_fetcher *f = arg;
	int action =
	    (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
	int running = 0;

	curl_multi_socket_action(f->multi, fd, action, &running);
	check_done(f);
	if (running <= 0 && evtimer_pending(f->timer, NULL))
		evtimer_del(f->timer);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct policy_fetcher *f = arg;
	int running = 0;

	curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(f);
}

/* CURLMOPT_TIMERFUNCTION: arm (or disarm, -1) the one timer; never act from here */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct policy_fetcher *f = userp;

	if (timeout_ms < 0) {
		evtimer_del(f->timer);
	} else {
		struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

		evtimer_add(f->timer, &tv);
	}
	return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl asks, or stop watching it */
static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct policy_fetcher *f = userp;
	struct sock *s = socketp;

	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			event_free(s->ev);
			free(s);
			curl_multi_assign(f->multi, fd, NULL);
		}
		return 0;
	}
	short kind = EV_PERSIST | (what & CURL_POLL_IN ? EV_READ : 0) |
	             (what & CURL_POLL_OUT ? EV_WRITE : 0);
	if (s == NULL) {
		s = xcalloc(1, sizeof(*s));
		s->fd = fd;
		s->f = f;
		curl_multi_assign(f->multi, fd, s);
	} else {
		event_free(s->ev);
	}
	s->ev = event_new(f->base, fd, kind, sock_event_cb, f);
	if (s->ev == NULL)
		fatal("policy: event_new failed");
	event_add(s->ev, NULL);
	return 0;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct policy_fetch *q = userp;
	size_t n = size * nmemb;

	if (n > MTASTS_MAX_POLICY - q->len) {
		q->too_large = true;
		return 0; /* CURLE_WRITE_ERROR: stop reading */
	}
	q->body = xrealloc(q->body, q->len + n + 1);
	memcpy(q->body + q->len, data, n);
	q->len += n;
	q->body[q->len] = '\0';
	return n;
}

struct policy_fetcher *policy_fetcher_new(struct event_base *base, const char *ca_file, char *err,
                                          size_t errlen)
{
	struct policy_fetcher *f;

	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK) {
		snprintf(err, errlen, "libcurl: %s", curl_easy_strerror(curl_init_rc));
		return NULL;
	}
	f = xcalloc(1, sizeof(*f));
	f->base = base;
	f->multi = curl_multi_init();
	if (f->multi == NULL) {
		snprintf(err, errlen, "libcurl: curl_multi_init failed");
		free(f);
		return NULL;
	}
	f->timer = evtimer_new(base, timer_event_cb, f);
	if (f->timer == NULL)
		fatal("policy: evtimer_new failed");
	f->ca_file = ca_file != NULL ? xstrdup(ca_file) : NULL;
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
	return f;
}

void policy_fetcher_free(struct policy_fetcher **pf)
{
	struct policy_fetcher *f = *pf;

	if (f == NULL)
		return;
	while (f->head != NULL) {
		struct policy_fetch *q = f->head;

		fetch_unlink(q);  // NOLINT(clang-analyzer-unix.Malloc): q is the live head
		fetch_destroy(q); /* curl's CURL_POLL_REMOVE frees the socket events */
	}
	curl_multi_cleanup(f->multi);
	event_free(f->timer);
	free(f->ca_file);
	free(f);
	*pf = NULL;
}

#define SET(opt, val)                                                                              \
	do {                                                                                       \
		if (curl_easy_setopt(q->easy, opt, val) != CURLE_OK) {                             \
			snprintf(err, errlen, "libcurl: cannot set %s", #opt);                     \
			goto fail;                                                                 \
		}                                                                                  \
	} while (0)

struct policy_fetch *policy_fetch_start(struct policy_fetcher *f, const char *host, unsigned port,
                                        const char *const *addrs, size_t n, policy_fetch_cb cb,
                                        void *arg, char *err, size_t errlen)
{
	struct policy_fetch *q = xcalloc(1, sizeof(*q));
	char url[600], *res;

	q->f = f;
	q->cb = cb;
	q->arg = arg;
	q->easy = curl_easy_init();
	if (q->easy == NULL || n == 0) {
		snprintf(err, errlen, n == 0 ? "no address" : "libcurl: curl_easy_init failed");
		goto fail;
	}
	/* "host:port:addr1,[v6addr],..." pins the name to our resolver's answer */
	res = xasprintf("%s:%u:", host, port);
	for (size_t i = 0; i < n; i++) {
		bool v6 = strchr(addrs[i], ':') != NULL;
		char *more = xasprintf("%s%s%s%s%s", res, i ? "," : "", v6 ? "[" : "", addrs[i],
		                       v6 ? "]" : "");

		free(res);
		res = more;
	}
	q->resolve = curl_slist_append(NULL, res);
	free(res);
	snprintf(url, sizeof(url), "https://%s:%u/.well-known/mta-sts.txt", host, port);
	if (port == 443)
		snprintf(url, sizeof(url), "https://%s/.well-known/mta-sts.txt", host);

	SET(CURLOPT_URL, url);
	SET(CURLOPT_PRIVATE, (char *)q);
	SET(CURLOPT_RESOLVE, q->resolve);
	SET(CURLOPT_PROTOCOLS_STR, "https");
	SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_PROXY, ""); /* never an https_proxy from the environment */
	SET(CURLOPT_SSL_VERIFYPEER, 1L);
	SET(CURLOPT_SSL_VERIFYHOST, 2L);
	SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (f->ca_file != NULL)
		SET(CURLOPT_CAINFO, f->ca_file);
	SET(CURLOPT_TIMEOUT_MS, (long)FETCH_TIMEOUT_MS);
	SET(CURLOPT_CONNECTTIMEOUT_MS, (long)FETCH_CONNECT_MS);
	SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MTASTS_MAX_POLICY);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_USERAGENT, "strictmx/" STRICTMX_VERSION);
	SET(CURLOPT_WRITEFUNCTION, write_cb);
	SET(CURLOPT_WRITEDATA, q);
	SET(CURLOPT_ERRORBUFFER, q->errbuf);
	if (curl_multi_add_handle(f->multi, q->easy) != CURLM_OK) {
		snprintf(err, errlen, "libcurl: curl_multi_add_handle failed");
		goto fail;
	}
	q->next = f->head;
	if (f->head != NULL)
		f->head->prev = q;
	f->head = q;
	return q;
fail:
	if (q->easy != NULL)
		curl_easy_cleanup(q->easy);
	curl_slist_free_all(q->resolve);
	free(q);
	return NULL;
}

void policy_fetch_cancel(struct policy_fetch *q)
{
	if (q == NULL)
		return;
	fetch_unlink(q);
	fetch_destroy(q);
}
