/*
 * inbound/server - listeners and the I/O of inbound sessions: the main loop
 * accepts and applies the connection limits, `[server] threads` inbound loops
 * (threads) move bytes between sockets and inbound/session, do the STARTTLS
 * upgrades and per-state timeouts; accepted messages go to the queue on the
 * main loop.
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
/*
 * inbound_server_start - start the inbound loops (`[server] threads`), after
 * the privilege drop; accepted connections are handed to them
 */
int inbound_server_start(struct inbound_server *srv, char *err, size_t errlen);
/*
 * inbound_server_stop - stop accepting, end every session and join the
 * loops; messages not yet acknowledged are dropped (their clients saw no
 * 250). Verdicts of the queue that arrive later are discarded. Call before
 * the queue is closed; free after it.
 */
void inbound_server_stop(struct inbound_server *srv);
void inbound_server_free(struct inbound_server **srv);

#endif
