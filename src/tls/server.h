/*
 * tls/server - the server-side TLS context: strong defaults, ECDSA + RSA
 * certificates, a self-signed ECDSA P-256 certificate generated when none is
 * configured. Never parses SMTP.
 */
#ifndef STRICTMX_TLS_SERVER_H
#define STRICTMX_TLS_SERVER_H

#include <stddef.h>
#include <openssl/ssl.h>

struct config;

/*
 * tls_server_ctx_new - build the SSL_CTX shared read-only by all sessions.
 * Defaults (overridable by [tls] protocols/ciphers/ciphersuites/groups):
 * TLS 1.2 and 1.3 only; TLS 1.2 suites ECDHE with AES-GCM or
 * ChaCha20-Poly1305 only; groups X25519:P-256:P-384; server preference; no
 * compression; no renegotiation; no session tickets state kept beyond the
 * library default; SSL_OP_IGNORE_UNEXPECTED_EOF; SSL_MODE_RELEASE_BUFFERS.
 * Certificates: every tls_cert/tls_key pair of the config (key must match
 * cert). With no pair configured: data_dir/tls/selfsigned.crt and .key (key
 * mode 0600) are created on first start (ECDSA P-256, CN and SAN = hostname,
 * valid 10 years) or loaded, and the SHA-256 fingerprint is logged
 * (event=tls_selfsigned sha256=AA:BB:...).
 * Returns NULL with err filled ("tls_cert /x: no such file", ...).
 */
SSL_CTX *tls_server_ctx_new(const struct config *c, char *err, size_t errlen);

/*
 * tls_describe - "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
 * for the Received: header (Postfix's wording).
 */
void tls_describe(const SSL *ssl, char *buf, size_t len);

/* tls_cert_fingerprint - "AB:CD:..." SHA-256 of the DER certificate */
int tls_cert_fingerprint(X509 *x, char *buf, size_t len);

#endif
