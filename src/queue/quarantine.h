/*
 * queue/quarantine - damaged queue entries are moved aside, never delivered.
 *
 * Used by queue.c's recovery at start, before the first delivery: every
 * message whose rows or body file cannot be what the queue wrote goes to
 * data_dir/quarantine/ (the body under its id, the rows as text in
 * ID.envelope), is logged as event=queue_quarantine and leaves the queue, so
 * the rest of it flows on. A body that is simply missing is not quarantined:
 * its envelope is sound, and queue.c fails it with a DSN (event=queue_corrupt).
 */
#ifndef STRICTMX_QUEUE_QUARANTINE_H
#define STRICTMX_QUEUE_QUARANTINE_H

#include <sqlite3.h>
#include <stddef.h>

/*
 * queue_body_check - why the body file at path is not a message of size
 * octets as the queue writes it ("body file missing", a wrong size, not a
 * message ...), or NULL when it is; buf holds the text when needed
 */
const char *queue_body_check(const char *path, sqlite3_int64 size, char *buf, size_t len);

/* queue_quarantine_scan - check every entry of db; returns how many were moved */
size_t queue_quarantine_scan(sqlite3 *db, const char *data_dir, const char *queue_dir);

#endif
