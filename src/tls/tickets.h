/*
 * tls/tickets - TLS session tickets with rotated keys (inbound).
 *
 * OpenSSL's default ticket key is made once per SSL_CTX and kept for the life
 * of the process: a key stolen from a long-running MX decrypts every resumed
 * session ever made with it. Here the key is replaced every `rotate` seconds
 * and the previous one is kept only to accept (and renew) tickets issued
 * just before a rotation, so no ticket is usable for more than two periods.
 * The keys live only in memory (a restart starts a fresh ring).
 */
#ifndef STRICTMX_TLS_TICKETS_H
#define STRICTMX_TLS_TICKETS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* tls_tickets_enable - install the key ring on ctx; 0, or -1 with err */
int tls_tickets_enable(SSL_CTX *ctx, unsigned rotate_secs, char *err, size_t errlen);

/* tls_tickets_rotate - a new current key now (the previous one is kept) */
void tls_tickets_rotate(SSL_CTX *ctx);

#endif
