/*
 * queue/admin - the administrator's view of the queue, for `strictmx queue`:
 * list, show, flush, delete. Works while the daemon runs (SQLite WAL lets a
 * reader and the daemon's writer share the database); flush and delete
 * signal the daemon (SIGUSR1, pid from data_dir/strictmxd.pid) so it acts at
 * once.
 */
#ifndef STRICTMX_QUEUE_ADMIN_H
#define STRICTMX_QUEUE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

int queue_admin_list(const char *data_dir, bool json, FILE *out, char *err, size_t errlen);
int queue_admin_show(const char *data_dir, const char *id, bool json, FILE *out, char *err,
                     size_t errlen);
int queue_admin_flush(const char *data_dir, FILE *out, char *err, size_t errlen);
int queue_admin_delete(const char *data_dir, const char *id, FILE *out, char *err, size_t errlen);

/* the daemon's pid file, written at start */
char *queue_admin_pidfile(const char *data_dir);

#endif
