/*
 * check/probe - the I/O of the checker's connections, on the caller's
 * libevent loop, the way src/outbound/delivery.c does it:
 *  - TLS probe: the delivery client session (outbound/session, probe mode)
 *    over a plain bufferevent, switched to a TLS bufferevent on the same
 *    socket once STARTTLS has left; the handshake is verified with
 *    tls_client_verify / tls_client_verify_dane before the session may go
 *    on; the session ends after the EHLO inside TLS (QUIT, no MAIL).
 *  - enforcement probe: check/enforce over a plaintext connection.
 * Every step (connect, each reply, the handshake) is bounded by timeout.
 * The callback always runs from the loop, never inside the start call.
 */
#ifndef STRICTMX_CHECK_PROBE_H
#define STRICTMX_CHECK_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include "check/check.h"
#include "tls/client.h"

struct event_base;
struct check_probe;
typedef void (*check_probe_cb)(void *arg);

struct check_probe_params {
	struct event_base *base;
	SSL_CTX *tls;
	const char *helo;
	const char *host;      /* the MX host name: SNI and PKIX reference name */
	const char *tlsa_base; /* DANE: SNI and primary name */
	bool dane;             /* verify by DANE with tlsa; else PKIX against host */
	bool verify_required;  /* false: go on after a failed verification (encrypt-only) */
	const struct tls_tlsa *tlsa;
	size_t n_tlsa;
	const char *const *extra_names; /* PKIX: [domain] match names */
	size_t n_extra;
	const struct sockaddr_storage *addr;
	unsigned timeout; /* seconds, each step */
	/*
	 * DANE probes whose TLSA base is the MX host name (the same SNI as a PKIX
	 * probe's): also fill *pkix_out with the PKIX verdict on the same
	 * handshake (tls_client_verify_pkix_after), so no second handshake is
	 * needed. Left untouched (ran = false) otherwise. NULL: not wanted.
	 */
	struct check_tls *pkix_out;
};

/* check_probe_tls - the TLS probe; out is filled, then cb(arg) */
struct check_probe *check_probe_tls(const struct check_probe_params *p, struct check_tls *out,
                                    check_probe_cb cb, void *arg);
/* check_probe_enforce - the plaintext MAIL FROM probe; fills out->enforce* */
struct check_probe *check_probe_enforce(const struct check_probe_params *p, struct check_addr *out,
                                        check_probe_cb cb, void *arg);
/* check_probe_free - stop (no callback) and free; *p = NULL */
void check_probe_free(struct check_probe **p);

#endif
