/*
 * engine - the consumers of the queue: takes due jobs from queue/ and hands
 * them to local delivery (Maildir, LMTP) or to outbound delivery, and gives
 * one result per recipient back to the queue.
 */
#ifndef STRICTMX_ENGINE_ENGINE_H
#define STRICTMX_ENGINE_ENGINE_H

#include <event2/event.h>

struct config;
struct queue;
struct engine;

struct engine *engine_new(struct event_base *base, const struct config *c, struct queue *q,
                          char *err, size_t errlen);
void engine_free(struct engine **e);

#endif
