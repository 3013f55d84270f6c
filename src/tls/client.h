/*
 * tls/client - the outbound (client) TLS context and per-connection setup:
 * the same protocol and algorithm policy as inbound (tls/policy), PKIX
 * verification of the MX certificate (RFC 9525 name rules) and plain-words
 * reasons when it fails. Never parses SMTP.
 *
 * Verification follows Postfix: the handshake runs with SSL_VERIFY_NONE and
 * a callback that records the first error; the decision is made afterwards
 * by tls_client_verify(), so a refusal can name the failed check. A caller
 * that skips tls_client_verify() has NOT verified anything.
 */
#ifndef STRICTMX_TLS_CLIENT_H
#define STRICTMX_TLS_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

struct config;

/*
 * tls_client_ctx_new - the SSL_CTX shared read-only by all outbound
 * connections. [outbound] protocols/ciphers/ciphersuites/groups (NULL = the
 * inbound defaults: TLS 1.2 + 1.3, ECDHE AEAD suites, X25519:P-256:P-384,
 * security level 2); trust anchors from ca_file, else the system store;
 * SSL_CTX_dane_enable (a prerequisite for DANE, no commitment to it);
 * SSL_OP_IGNORE_UNEXPECTED_EOF; no session cache and no tickets, so a
 * verification result is never inherited from an earlier connection.
 * Returns NULL with err filled ("[outbound] ca_file /x: ...", ...).
 */
SSL_CTX *tls_client_ctx_new(const struct config *c, char *err, size_t errlen);

/*
 * tls_client_new_pkix - an SSL for a connection to mx_host that must be
 * PKIX-verified: SNI = mx_host, reference names = mx_host and extra_names
 * (e.g. the names of a [domain] match list), DNS-ID (SAN dNSName) only,
 * wildcards only as the whole left-most label. A trailing dot is ignored.
 * Names must be A-labels. Returns NULL if a name is empty, over-long or not
 * a host name, or if OpenSSL fails. Free with SSL_free().
 */
SSL *tls_client_new_pkix(SSL_CTX *ctx, const char *mx_host, const char *const *extra_names,
                         size_t n_extra);

/*
 * tls_client_new_encrypt_only - an SSL for the per-domain "tls =
 * encrypt-only" override: SNI = mx_host, no reference name, so
 * tls_client_verify() always fails on it; the caller logs the unverified use.
 */
SSL *tls_client_new_encrypt_only(SSL_CTX *ctx, const char *mx_host);

/*
 * tls_client_verify - after a completed handshake: 0 when a certificate was
 * presented, its chain verified to a trust anchor, its dates are valid and
 * one of the reference names matched. Otherwise -1 and why names the check
 * in plain words, e.g.
 *   "certificate has expired (notAfter 2020-01-31)"
 *   "certificate name does not match mx1.example.org (certificate names:
 *    a.example, b.example)"
 *   "certificate is self-signed"
 *   "certificate issuer is unknown (unable to get local issuer certificate)"
 *   "no certificate presented"
 * Names taken from the certificate are reduced to printable ASCII.
 * On an SSL from tls_client_new_dane it gives tls_client_verify_dane's verdict.
 */
int tls_client_verify(SSL *ssl, char *why, size_t whylen);

/*
 * A TLSA record (RFC 6698 §2.1) as the caller got it from a DNSSEC-validated
 * answer: certificate usage, selector, matching type, and the certificate
 * association data in binary (wire) form. Only borrowed for the call.
 */
struct tls_tlsa {
	uint8_t usage, selector, mtype;
	const unsigned char *data; /* binary (wire) form */
	size_t len;
};

/*
 * tls_client_new_dane - an SSL for a DANE-authenticated connection: only
 * usages 2 and 3 are loaded (0/1 are dropped here, RFC 7672 §3.1.3), at least
 * one must be usable (*n_usable says how many), else NULL with why. base = the
 * TLSA base domain (SNI and primary reference name for DANE-TA); extra names
 * (the MX host name before CNAME expansion, ...) are added with SSL_add1_host.
 * DANE-EE matches skip name checks (DANE_FLAG_NO_DANE_EE_NAMECHECKS).
 *
 * The trust store of ctx is never consulted for such a connection: with only
 * usages 2/3 loaded OpenSSL builds the chain to the TLSA records alone, and
 * a connection with no usable record is refused here rather than left to
 * OpenSSL's silent PKIX fallback. Names are validated as for
 * tls_client_new_pkix (extra names may start with '.'); n_usable may be NULL.
 * Free with SSL_free().
 */
SSL *tls_client_new_dane(SSL_CTX *ctx, const char *base, const char *const *extra_names,
                         size_t n_extra, const struct tls_tlsa *recs, size_t n_recs,
                         size_t *n_usable, char *why, size_t whylen);

/*
 * tls_client_verify_dane - after the handshake on an SSL from
 * tls_client_new_dane: 0 when DANE authenticated the peer (matched is set to
 * e.g. "3 1 1 matched the server certificate" or "2 0 1 matched the trust
 * anchor at depth 1"); -1 with why in plain words otherwise:
 * "TLSA records do not match the certificate of mx.example.org" (name the
 * host = base), or for DANE-TA "certificate name does not match mx.example.org"
 * when the chain matched but the name did not ("... does not match a or b"
 * with extra names). Other DANE-TA failures read as for tls_client_verify
 * ("certificate has expired (notAfter 2020-01-31)", ...). DANE-EE(3) matches
 * ignore names and dates (RFC 7672 §3.1.1). On any other SSL: -1.
 */
int tls_client_verify_dane(SSL *ssl, char *why, size_t whylen, char *matched, size_t matchedlen);

/*
 * tls_client_verify_pkix_after - after a completed handshake on any SSL of
 * ctx (a DANE one, say): would PKIX have accepted the same chain for
 * mx_host (and extra_names)? The chain the server sent is verified again on
 * ctx's trust store with tls_client_new_pkix's rules (purpose TLS server,
 * ctx's security level, DNS-IDs only, no partial wildcards); 0 or -1 with why
 * worded as tls_client_verify's. Only meaningful when the handshake sent
 * SNI = mx_host (a DANE connection whose TLSA base is the MX host name): a
 * server may choose its certificate by SNI. Used by strictmx check to give a
 * DANE MX's PKIX result without a second handshake.
 */
int tls_client_verify_pkix_after(SSL_CTX *ctx, SSL *done, const char *mx_host,
                                 const char *const *extra_names, size_t n_extra, char *why,
                                 size_t whylen);

/* tls_client_describe - "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" */
void tls_client_describe(SSL *ssl, char *buf, size_t len);

#endif
