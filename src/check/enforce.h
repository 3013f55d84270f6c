/*
 * check/enforce - the inbound enforcement probe as a pure state machine:
 * over a PLAINTEXT connection, greeting -> EHLO (HELO if EHLO is refused)
 * -> MAIL FROM:<> -> (the reply is the result) -> RSET -> QUIT. Never RCPT,
 * never DATA: nothing can be delivered. The I/O layer (check/probe.c)
 * moves bytes; unit tests drive it directly.
 */
#ifndef STRICTMX_CHECK_ENFORCE_H
#define STRICTMX_CHECK_ENFORCE_H

#include <stdbool.h>
#include <stddef.h>

#include "check/check.h"

struct check_enforce_session;

struct check_enforce_session *check_enforce_new(const char *helo_name);
void check_enforce_free(struct check_enforce_session **s);

/* check_enforce_input - consume server bytes; returns how many were used */
size_t check_enforce_input(struct check_enforce_session *s, const char *buf, size_t len);
/* commands to send; _output_clear once written */
const char *check_enforce_output(const struct check_enforce_session *s, size_t *len);
void check_enforce_output_clear(struct check_enforce_session *s);
/* check_enforce_done - nothing more to read: send the output, then close */
bool check_enforce_done(const struct check_enforce_session *s);
void check_enforce_timeout(struct check_enforce_session *s);
void check_enforce_eof(struct check_enforce_session *s);

/* check_enforce_result - the verdict; reply = the MAIL FROM reply, error = why none */
enum check_enforce check_enforce_result(const struct check_enforce_session *s, const char **reply,
                                        const char **error);

#endif
