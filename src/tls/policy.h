/*
 * tls/policy - the protocol and algorithm policy shared by the server
 * (inbound) and client (outbound) contexts, so both ends of strictmx speak
 * the same strong defaults. Never parses SMTP.
 */
#ifndef STRICTMX_TLS_POLICY_H
#define STRICTMX_TLS_POLICY_H

#include <stddef.h>
#include <openssl/ssl.h>

/*
 * Defaults (Applied Crypto Hardening, bettercrypto.org): TLS 1.2 suites are
 * ECDHE with AES-GCM or ChaCha20-Poly1305 only; all three TLS 1.3 AEADs.
 */
#define TLS_POLICY_CIPHERS                                                                         \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                               \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                               \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
#define TLS_POLICY_CIPHERSUITES                                                                    \
	"TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
#define TLS_POLICY_GROUPS "X25519:P-256:P-384"

/*
 * tls_policy_apply - security level 2, protocol range, TLS 1.2 cipher list,
 * TLS 1.3 suites and groups. Each string may be NULL or "" for the default
 * (protocols default: "TLSv1.2 TLSv1.3"; nothing older is accepted).
 * section names the INI section in messages: "[tls] ciphers \"X\": ...".
 * Returns 0, or -1 with err filled.
 */
int tls_policy_apply(SSL_CTX *ctx, const char *section, const char *protocols, const char *ciphers,
                     const char *ciphersuites, const char *groups, char *err, size_t errlen);

/*
 * tls_policy_ossl_reason - the reason string of the most recent OpenSSL
 * error, and the error queue cleared.
 */
const char *tls_policy_ossl_reason(void);

#endif
