/*
 * qid - queue ids: 20 characters of [0-9B-Z minus vowels], the first 11 a
 * microsecond timestamp (ids sort by arrival), then a counter and random
 * characters. Unique within a node; never contain characters that need
 * quoting in logs, file names or SQL.
 */
#ifndef STRICTMX_COMMON_QID_H
#define STRICTMX_COMMON_QID_H

#define QID_LEN 20

void qid_new(char out[QID_LEN + 1]);

#endif
