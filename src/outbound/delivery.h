/*
 * outbound/delivery - deliver one message to the recipients of one domain:
 * find the MX hosts (dns/), and for each host and address in order run an
 * SMTP session (outbound/session) that must reach TLS whose certificate
 * verifies (tls/client) before MAIL is ever sent. A host that fails for any
 * reason hands the remaining recipients to the next one; nothing is ever
 * sent in the clear, and no certificate is accepted unverified unless the
 * domain's [domain] section says tls = encrypt-only (logged on every use).
 */
#ifndef STRICTMX_OUTBOUND_DELIVERY_H
#define STRICTMX_OUTBOUND_DELIVERY_H

#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>

#include "smtp/reply.h"

struct config;
struct dns_ctx;
struct outbound_ctx;
struct outbound_delivery;

enum outbound_outcome { OUT_DELIVERED, OUT_DEFER, OUT_FAIL };

struct outbound_rcpt_outcome {
	enum outbound_outcome outcome;
	struct smtp_reply reply; /* the deciding reply: remote, or our own */
	char mx[256];            /* the host that answered, or "" */
	char detail[512];        /* plain words; with every MX's reason when all failed */
};

struct outbound_request {
	const char *msg_id;
	const char *domain;
	const char *sender;
	const char *const *rcpts;
	size_t n_rcpts;
	const char *body_path;
	uint64_t size;
};

/* called once with one outcome per recipient; the delivery is freed already */
typedef void (*outbound_done_fn)(void *arg, const struct outbound_rcpt_outcome *res, size_t n);

struct outbound_ctx *outbound_ctx_new(struct event_base *base, const struct config *c,
                                      struct dns_ctx *dns, char *err, size_t errlen);
void outbound_ctx_free(struct outbound_ctx **ctx);

struct outbound_delivery *outbound_deliver(struct outbound_ctx *ctx,
                                           const struct outbound_request *req,
                                           outbound_done_fn done, void *arg);
/* outbound_cancel - stop without calling done (shutdown) */
void outbound_cancel(struct outbound_delivery **d);

#endif
