/*
 * policy/fetch - HTTPS GET of an MTA-STS policy file with libcurl's multi
 * interface, driven by the caller's libevent loop (curl's "hiperfifo"
 * pattern: CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION become libevent
 * events), so a slow policy host never blocks the loop.
 *
 * RFC 8461 §3.3: HTTPS only, PKIX-verified against the configured CA file
 * (or the system store), no redirects (a 3xx is an error), only HTTP 200
 * with Content-Type text/plain, at most 64 KiB, 10 s in all (5 s to
 * connect). The host name is never resolved by the system resolver: the
 * caller passes the addresses its validating resolver found
 * (CURLOPT_RESOLVE), and no proxy from the environment is used.
 */
#ifndef STRICTMX_POLICY_FETCH_H
#define STRICTMX_POLICY_FETCH_H

#include <stddef.h>

struct event_base;
struct policy_fetcher;
struct policy_fetch;

/* body is borrowed (valid during the call); error is NULL on success */
typedef void (*policy_fetch_cb)(void *arg, const char *body, size_t len, const char *error);

struct policy_fetcher *policy_fetcher_new(struct event_base *base, const char *ca_file, char *err,
                                          size_t errlen);
/* cancel every fetch in progress (no callbacks) and free; *f = NULL */
void policy_fetcher_free(struct policy_fetcher **f);

/*
 * policy_fetch_start - GET https://host:port/.well-known/mta-sts.txt from one
 * of addrs (numeric, n >= 1). The callback runs later, on the loop. NULL
 * with err when the transfer could not be set up.
 */
struct policy_fetch *policy_fetch_start(struct policy_fetcher *f, const char *host, unsigned port,
                                        const char *const *addrs, size_t n, policy_fetch_cb cb,
                                        void *arg, char *err, size_t errlen);
/* policy_fetch_cancel - stop a fetch; its callback is never called */
void policy_fetch_cancel(struct policy_fetch *q);

#endif
