/*
 * tls/policy - protocol and algorithm policy for every SSL_CTX strictmx
 * makes. Only TLS 1.2 and 1.3 (RFC 8996 deprecates 1.0 and 1.1, RFC 8314
 * §4.1 asks for 1.2 or later), forward-secret AEAD suites only.
 *
 * See policy.h for the contract.
 */
#include "tls/policy.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

static bool is_set(const char *s)
{
	return s != NULL && *s != '\0';
}

/*
 * The reason of the most recent OpenSSL error (the innermost one is usually
 * the useful one: "ee key too small", "no cipher match"), and clear the
 * queue so later calls start clean.
 */
const char *tls_policy_ossl_reason(void)
{
	unsigned long e, last = 0;
	const char *r;

	while ((e = ERR_get_error()) != 0)
		last = e;
	if (last == 0)
		return "unknown OpenSSL error";
	r = ERR_reason_error_string(last);
	return r != NULL ? r : "unknown OpenSSL error";
}

/*
 * set_protocols - "TLSv1.2 TLSv1.3" (separated by blanks, commas or colons)
 * gives the min and max version.
 */
static int set_protocols(SSL_CTX *ctx, const char *section, const char *spec, char *err,
                         size_t errlen)
{
	int min = 0, max = 0;
	const char *p = spec;

	if (!is_set(spec)) {
		min = TLS1_2_VERSION;
		max = TLS1_3_VERSION;
	}
	while (p != NULL && *p != '\0') {
		size_t n;
		int v;

		p += strspn(p, " \t,:");
		n = strcspn(p, " \t,:");
		if (n == 0)
			break;
		if (n == 7 && strncmp(p, "TLSv1.2", n) == 0) {
			v = TLS1_2_VERSION;
		} else if (n == 7 && strncmp(p, "TLSv1.3", n) == 0) {
			v = TLS1_3_VERSION;
		} else {
			snprintf(err, errlen,
			         "[%s] protocols: unsupported protocol \"%.*s\" (only TLSv1.2 and "
			         "TLSv1.3)",
			         section, (int)(n > 40 ? 40 : n), p);
			return -1;
		}
		if (min == 0 || v < min)
			min = v;
		if (v > max)
			max = v;
		p += n;
	}
	if (min == 0) {
		snprintf(err, errlen, "[%s] protocols: no protocol given", section);
		return -1;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, min) || !SSL_CTX_set_max_proto_version(ctx, max)) {
		snprintf(err, errlen, "[%s] protocols: %s", section, tls_policy_ossl_reason());
		return -1;
	}
	return 0;
}

int tls_policy_apply(SSL_CTX *ctx, const char *section, const char *protocols, const char *ciphers,
                     const char *ciphersuites, const char *groups, char *err, size_t errlen)
{
	const char *cl = is_set(ciphers) ? ciphers : TLS_POLICY_CIPHERS;
	const char *suites = is_set(ciphersuites) ? ciphersuites : TLS_POLICY_CIPHERSUITES;
	const char *gl = is_set(groups) ? groups : TLS_POLICY_GROUPS;

	/*
	 * Level 2 (112-bit security): refuses RSA/DH keys under 2048 bits and
	 * SHA-1 signatures, on our certificates and on the peer's chain alike.
	 */
	SSL_CTX_set_security_level(ctx, 2);
	if (set_protocols(ctx, section, protocols, err, errlen) < 0)
		return -1;
	/* fails only when nothing matched; unknown words are skipped by OpenSSL */
	if (!SSL_CTX_set_cipher_list(ctx, cl)) {
		snprintf(err, errlen, "[%s] ciphers \"%s\": %s", section, cl,
		         tls_policy_ossl_reason());
		return -1;
	}
	if (!SSL_CTX_set_ciphersuites(ctx, suites)) {
		snprintf(err, errlen, "[%s] ciphersuites \"%s\": %s", section, suites,
		         tls_policy_ossl_reason());
		return -1;
	}
	if (!SSL_CTX_set1_groups_list(ctx, gl)) {
		snprintf(err, errlen, "[%s] groups \"%s\": %s", section, gl,
		         tls_policy_ossl_reason());
		return -1;
	}
	return 0;
}
