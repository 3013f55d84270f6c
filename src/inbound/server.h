/*
 * inbound/server - listeners and the I/O of inbound sessions on one libevent
 * loop: bytes between sockets and inbound/session, STARTTLS upgrades, limits
 * on connections, per-state timeouts; accepted messages go to the queue.
 */
#ifndef STRICTMX_INBOUND_SERVER_H
#define STRICTMX_INBOUND_SERVER_H

#include <stddef.h>
#include <event2/event.h>
#include <openssl/ssl.h>

struct config;
struct inbound_server;

/*
 * inbound_server_new - bind every listener of the config (nothing is read
 * until the loop runs, so the caller can drop privileges in between).
 * tls may be NULL (no STARTTLS offered). NULL with err on failure.
 */
struct queue;
struct inbound_server *inbound_server_new(struct event_base *base, const struct config *c,
                                          SSL_CTX *tls, struct queue *q, char *err, size_t errlen);
/* inbound_server_set_queue - where accepted messages go (before the loop runs) */
void inbound_server_set_queue(struct inbound_server *srv, struct queue *q);
void inbound_server_free(struct inbound_server **srv);

#endif
