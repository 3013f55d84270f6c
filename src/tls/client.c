/*
 * tls/client - outbound TLS: context, PKIX reference names, and the
 * post-handshake verdict in plain words. See client.h for the contract.
 *
 * Why SSL_VERIFY_NONE: with SSL_VERIFY_PEER a failed check aborts the
 * handshake with an alert and all we could say is "handshake failure".
 * Postfix (src/tls/tls_client.c) lets the handshake finish, records what
 * failed in a callback and decides afterwards; so do we. Nothing is sent
 * over the connection until tls_client_verify() said yes.
 */
#include "tls/client.h"

#include "common/config.h"
#include "common/xmalloc.h"
#include "tls/policy.h"
#include "tls/server.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* RFC 1035 §2.3.4: 255 octets on the wire, 253 as text without the dot */
#define HOST_MAX 253

/* RFC 7218 §2.1 certificate usages (OpenSSL keeps its names internal) */
#define TLSA_DANE_TA 2
#define TLSA_DANE_EE 3

/* What the verify callback learned, kept in the SSL's ex_data. */
struct verify_state {
	bool pkix;       /* reference names were set: verification is demanded */
	bool dane;       /* from tls_client_new_dane: verdict by tls_client_verify_dane */
	size_t n_usable; /* DANE: TLSA records OpenSSL accepted */
	char *base;      /* DANE: the TLSA base domain, for messages */
	int err;         /* first X509_V_ERR_* seen, 0 = none */
	int depth;       /* where in the chain */
	X509 *cert;      /* the certificate at that depth (owned) */
	char *names;     /* reference names for messages: "a or b" */
};

static CRYPTO_ONCE idx_once = CRYPTO_ONCE_STATIC_INIT;
static int state_idx = -1;

static void state_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct verify_state *vs = ptr;

	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (vs == NULL)
		return;
	X509_free(vs->cert);
	free(vs->names);
	free(vs->base);
	free(vs);
}

static void idx_init(void)
{
	state_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, state_free);
}

static int get_idx(void)
{
	if (!CRYPTO_THREAD_run_once(&idx_once, idx_init) || state_idx < 0)
		fatal("tls_client: cannot allocate an SSL ex_data index");
	return state_idx;
}

/* record_first - keep the first failure seen in vs; always go on */
static int record_first(struct verify_state *vs, int ok, X509_STORE_CTX *xs)
{
	if (!ok && vs != NULL && vs->err == 0) {
		X509 *cert = X509_STORE_CTX_get_current_cert(xs);

		vs->err = X509_STORE_CTX_get_error(xs);
		if (vs->err == 0)
			vs->err = X509_V_ERR_UNSPECIFIED;
		vs->depth = X509_STORE_CTX_get_error_depth(xs);
		if (cert != NULL && X509_up_ref(cert))
			vs->cert = cert;
	}
	return 1;
}

/*
 * verify_cb - record the first failure and carry on: the verdict is made by
 * tls_client_verify() once the handshake is over.
 */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());

	return record_first(ssl != NULL ? SSL_get_ex_data(ssl, get_idx()) : NULL, ok, xs);
}

SSL_CTX *tls_client_ctx_new(const struct config *c, char *err, size_t errlen)
{
	SSL_CTX *ctx;
	uint64_t opts;

	(void)get_idx();
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		snprintf(err, errlen, "SSL_CTX_new: %s", tls_policy_ossl_reason());
		return NULL;
	}
	if (tls_policy_apply(ctx, "outbound", c->out_protocols, c->out_ciphers, c->out_ciphersuites,
	                     c->out_groups, err, errlen) < 0)
		goto fail;
	if (c->ca_file != NULL && *c->ca_file != '\0') {
		if (!SSL_CTX_load_verify_locations(ctx, c->ca_file, NULL)) {
			snprintf(err, errlen, "[outbound] ca_file %s: %s", c->ca_file,
			         tls_policy_ossl_reason());
			goto fail;
		}
	} else if (!SSL_CTX_set_default_verify_paths(ctx)) {
		snprintf(err, errlen, "system trust store: %s", tls_policy_ossl_reason());
		goto fail;
	}
	/* c-anchors B.1: a prerequisite for SSL_dane_enable() later, no commitment */
	if (SSL_CTX_dane_enable(ctx) <= 0) {
		snprintf(err, errlen, "SSL_CTX_dane_enable: %s", tls_policy_ossl_reason());
		goto fail;
	}
	/*
	 * No compression (CRIME), no renegotiation. IGNORE_UNEXPECTED_EOF: SMTP
	 * frames itself, and libevent 2.1.12 needs it to see EOF (c-anchors
	 * B.3). No tickets and no cache: a resumed session would inherit the
	 * verification result of a connection with other requirements.
	 */
	opts = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
	       SSL_OP_NO_TICKET;
	SSL_CTX_set_options(ctx, opts);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, verify_cb);
	ERR_clear_error();
	return ctx;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}

/*
 * host_copy - a reference name without its trailing dot, if it is a host
 * name: letters, digits, '-', '.', no empty label. allow_dot lets a leading
 * dot through (".example.org": any subdomain, as X509_check_host reads it).
 */
static bool host_copy(const char *in, bool allow_dot, char *out, size_t outlen)
{
	size_t n = in != NULL ? strlen(in) : 0;
	const char *p = in;

	if (n > 0 && in[n - 1] == '.')
		n--;
	if (allow_dot && n > 0 && *p == '.') {
		p++;
		n--;
	}
	if (n == 0 || n > HOST_MAX || n + 2 > outlen)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];

		if (c == '.' && (i == 0 || i + 1 == n || p[i - 1] == '.'))
			return false;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.'))
			return false;
	}
	if (p != in) {
		out[0] = '.';
		memcpy(out + 1, p, n);
		out[n + 1] = '\0';
	} else {
		memcpy(out, p, n);
		out[n] = '\0';
	}
	return true;
}

static SSL *new_ssl(SSL_CTX *ctx, const char *sni, bool pkix)
{
	SSL *ssl = SSL_new(ctx);
	struct verify_state *vs;

	if (ssl == NULL)
		return NULL;
	vs = xcalloc(1, sizeof(*vs));
	vs->pkix = pkix;
	if (!SSL_set_ex_data(ssl, get_idx(), vs)) {
		free(vs);
		SSL_free(ssl);
		return NULL;
	}
	/* RFC 6066 §3: SNI is a host name, no trailing dot */
	if (!SSL_set_tlsext_host_name(ssl, sni)) {
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

SSL *tls_client_new_pkix(SSL_CTX *ctx, const char *mx_host, const char *const *extra_names,
                         size_t n_extra)
{
	char host[HOST_MAX + 2], extra[HOST_MAX + 2];
	struct verify_state *vs;
	size_t namelen;
	SSL *ssl;

	if (!host_copy(mx_host, false, host, sizeof(host)))
		return NULL;
	ssl = new_ssl(ctx, host, true);
	if (ssl == NULL)
		return NULL;
	vs = SSL_get_ex_data(ssl, get_idx());
	/*
	 * RFC 9525 §6.3: DNS-IDs only, never the subject CN; §6.3 also allows
	 * a wildcard only as the whole left-most label ("RFC6125: No
	 * part-label 'foo*bar.example.com' wildcards for SMTP", Postfix).
	 */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	                           X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (!SSL_set1_host(ssl, host))
		goto fail;
	namelen = strlen(host) + 1;
	vs->names = xstrdup(host);
	for (size_t i = 0; i < n_extra; i++) {
		if (!host_copy(extra_names[i], true, extra, sizeof(extra)) ||
		    !SSL_add1_host(ssl, extra))
			goto fail;
		namelen += strlen(extra) + 4;
		vs->names = xrealloc(vs->names, namelen);
		strcat(vs->names, " or ");
		strcat(vs->names, extra);
	}
	return ssl;
fail:
	SSL_free(ssl);
	ERR_clear_error();
	return NULL;
}

SSL *tls_client_new_encrypt_only(SSL_CTX *ctx, const char *mx_host)
{
	char host[HOST_MAX + 2];

	if (!host_copy(mx_host, false, host, sizeof(host)))
		return NULL;
	return new_ssl(ctx, host, false);
}

/* put_clean - append s as printable ASCII ('?' for anything else) */
static void put_clean(char *buf, size_t len, size_t *pos, const char *s, size_t n)
{
	for (size_t i = 0; i < n && *pos + 1 < len; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[(*pos)++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	if (*pos < len)
		buf[*pos] = '\0';
}

/* san_names - "a.example, b.example" from the DNS SANs; 0 names: "" */
static size_t san_names(X509 *x, char *buf, size_t len)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	size_t pos = 0, count = 0;

	if (len == 0)
		return 0;
	buf[0] = '\0';
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		const unsigned char *d;
		int n;

		if (g->type != GEN_DNS)
			continue;
		d = ASN1_STRING_get0_data(g->d.dNSName);
		n = ASN1_STRING_length(g->d.dNSName);
		if (count > 0)
			put_clean(buf, len, &pos, ", ", 2);
		put_clean(buf, len, &pos, (const char *)d, n > 0 ? (size_t)n : 0);
		count++;
	}
	GENERAL_NAMES_free(gens);
	/* an over-long list ends in "..." rather than mid-name silently */
	if (pos + 1 >= len && len > 4)
		memcpy(buf + len - 4, "...", 4);
	return count;
}

/* day - "2020-01-31" for an ASN1_TIME (UTC) */
static void day(const ASN1_TIME *t, char *buf, size_t len)
{
	struct tm tm;

	if (t == NULL || !ASN1_TIME_to_tm(t, &tm)) {
		snprintf(buf, len, "unknown");
		return;
	}
	snprintf(buf, len, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

/* which - "certificate" for the leaf, "issuer certificate (depth N)" above */
static void which(int depth, char *buf, size_t len)
{
	if (depth <= 0)
		snprintf(buf, len, "certificate");
	else
		snprintf(buf, len, "issuer certificate at depth %d", depth);
}

/*
 * explain - plain words for an X509_V_ERR_* code. leaf is the peer's
 * certificate (for the names it carries), cert the one that failed.
 */
static void explain(const struct verify_state *vs, int err, int depth, X509 *leaf, X509 *cert,
                    char *why, size_t whylen)
{
	char w[64], date[32], names[512];
	const char *ossl = X509_verify_cert_error_string(err);

	which(depth, w, sizeof(w));
	if (cert == NULL)
		cert = leaf;
	switch (err) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
		day(X509_get0_notAfter(cert), date, sizeof(date));
		snprintf(why, whylen, "%s has expired (notAfter %s)", w, date);
		break;
	case X509_V_ERR_CERT_NOT_YET_VALID:
		day(X509_get0_notBefore(cert), date, sizeof(date));
		snprintf(why, whylen, "%s is not yet valid (notBefore %s)", w, date);
		break;
	case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
	case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
		snprintf(why, whylen, "%s has malformed validity dates", w);
		break;
	case X509_V_ERR_HOSTNAME_MISMATCH:
		if (san_names(leaf, names, sizeof(names)) > 0)
			snprintf(why, whylen,
			         "certificate name does not match %s (certificate names: %s)",
			         vs->names, names);
		else
			snprintf(why, whylen,
			         "certificate name does not match %s (the certificate has no DNS "
			         "names)",
			         vs->names);
		break;
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		snprintf(why, whylen, "certificate is self-signed");
		break;
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		snprintf(why, whylen, "certificate chain ends in an untrusted root (%s)", ossl);
		break;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
		snprintf(why, whylen, "certificate issuer is unknown (%s)", ossl);
		break;
	case X509_V_ERR_CERT_SIGNATURE_FAILURE:
	case X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE:
	case X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY:
		snprintf(why, whylen, "%s has an invalid signature (%s)", w, ossl);
		break;
	case X509_V_ERR_CERT_REVOKED:
		snprintf(why, whylen, "%s is revoked", w);
		break;
	case X509_V_ERR_INVALID_CA:
	case X509_V_ERR_PATH_LENGTH_EXCEEDED:
	case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
		snprintf(why, whylen, "%s may not issue certificates (%s)", w, ossl);
		break;
	case X509_V_ERR_INVALID_PURPOSE:
		snprintf(why, whylen, "%s is not valid for a TLS server (%s)", w, ossl);
		break;
	case X509_V_ERR_EE_KEY_TOO_SMALL:
	case X509_V_ERR_CA_KEY_TOO_SMALL:
	case X509_V_ERR_CA_MD_TOO_WEAK:
		snprintf(why, whylen, "%s uses weak cryptography (%s)", w, ossl);
		break;
	case X509_V_ERR_CERT_CHAIN_TOO_LONG:
		snprintf(why, whylen, "certificate chain is too long");
		break;
	case X509_V_ERR_DANE_NO_MATCH:
		snprintf(why, whylen, "no DANE TLSA record matches the certificate chain");
		break;
	default:
		snprintf(why, whylen, "certificate verification failed at %s (%s)", w, ossl);
		break;
	}
}

int tls_client_verify(SSL *ssl, char *why, size_t whylen)
{
	struct verify_state *vs = ssl != NULL ? SSL_get_ex_data(ssl, get_idx()) : NULL;
	X509 *leaf;
	long res;

	if (whylen > 0)
		why[0] = '\0';
	if (vs == NULL) {
		snprintf(why, whylen, "connection was not set up for verification");
		return -1;
	}
	if (vs->dane) {
		char matched[64];

		return tls_client_verify_dane(ssl, why, whylen, matched, sizeof(matched));
	}
	if (!vs->pkix) {
		snprintf(why, whylen, "no reference name was set (encrypt-only): not verified");
		return -1;
	}
	if (!SSL_is_init_finished(ssl)) {
		snprintf(why, whylen, "TLS handshake is not complete");
		return -1;
	}
	leaf = SSL_get0_peer_certificate(ssl);
	if (leaf == NULL) {
		snprintf(why, whylen, "no certificate presented");
		return -1;
	}
	res = SSL_get_verify_result(ssl);
	if (vs->err != 0) {
		explain(vs, vs->err, vs->depth, leaf, vs->cert, why, whylen);
		return -1;
	}
	if (res != X509_V_OK) {
		/* not seen by the callback (it always is): still a failure */
		explain(vs, (int)res, 0, leaf, NULL, why, whylen);
		return -1;
	}
	/* belt and braces: the name check ran and matched one of ours */
	if (SSL_get0_peername(ssl) == NULL) {
		explain(vs, X509_V_ERR_HOSTNAME_MISMATCH, 0, leaf, NULL, why, whylen);
		return -1;
	}
	return 0;
}

static void append_name(struct verify_state *vs, const char *name);

/* after_cb - tls_client_verify_pkix_after's verify_cb: the first failure */
static int after_cb(int ok, X509_STORE_CTX *xs)
{
	return record_first(X509_STORE_CTX_get_app_data(xs), ok, xs);
}

int tls_client_verify_pkix_after(SSL_CTX *ctx, SSL *done, const char *mx_host,
                                 const char *const *extra_names, size_t n_extra, char *why,
                                 size_t whylen)
{
	char host[HOST_MAX + 2], extra[HOST_MAX + 2];
	struct verify_state vs = {.pkix = true};
	X509_STORE_CTX *xs = NULL;
	X509_VERIFY_PARAM *param;
	X509 *leaf;
	int rc = -1, ok;

	if (whylen > 0)
		why[0] = '\0';
	if (ctx == NULL || done == NULL || !SSL_is_init_finished(done)) {
		snprintf(why, whylen, "TLS handshake is not complete");
		return -1;
	}
	if (!host_copy(mx_host, false, host, sizeof(host))) {
		snprintf(why, whylen, "cannot set up TLS for this host name");
		return -1;
	}
	leaf = SSL_get0_peer_certificate(done);
	if (leaf == NULL) {
		snprintf(why, whylen, "no certificate presented");
		return -1;
	}
	vs.names = xstrdup(host);
	xs = X509_STORE_CTX_new();
	/* the client side's peer chain includes the leaf: as sent, untrusted */
	if (xs == NULL ||
	    !X509_STORE_CTX_init(xs, SSL_CTX_get_cert_store(ctx), leaf,
	                         SSL_get_peer_cert_chain(done)) ||
	    !X509_STORE_CTX_set_default(xs, "ssl_server"))
		goto fail;
	param = X509_STORE_CTX_get0_param(xs);
	if (!X509_VERIFY_PARAM_set1(param, SSL_CTX_get0_param(ctx)))
		goto fail;
	X509_VERIFY_PARAM_set_auth_level(param, SSL_CTX_get_security_level(ctx));
	X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	                                           X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (!X509_VERIFY_PARAM_set1_host(param, host, 0))
		goto fail;
	for (size_t i = 0; i < n_extra; i++) {
		if (!host_copy(extra_names[i], true, extra, sizeof(extra)) ||
		    !X509_VERIFY_PARAM_add1_host(param, extra, 0))
			goto fail;
		append_name(&vs, extra);
	}
	X509_STORE_CTX_set_app_data(xs, &vs);
	X509_STORE_CTX_set_verify_cb(xs, after_cb);
	ok = X509_verify_cert(xs);
	if (vs.err != 0)
		explain(&vs, vs.err, vs.depth, leaf, vs.cert, why, whylen);
	else if (ok <= 0)
		explain(&vs, X509_STORE_CTX_get_error(xs), 0, leaf, NULL, why, whylen);
	else if (X509_VERIFY_PARAM_get0_peername(param) == NULL)
		explain(&vs, X509_V_ERR_HOSTNAME_MISMATCH, 0, leaf, NULL, why, whylen);
	else
		rc = 0;
	goto out;
fail:
	snprintf(why, whylen, "cannot verify the certificate again: %s", tls_policy_ossl_reason());
out:
	X509_STORE_CTX_free(xs);
	X509_free(vs.cert);
	free(vs.names);
	ERR_clear_error();
	return rc;
}

/* append_name - vs->names += " or " name */
static void append_name(struct verify_state *vs, const char *name)
{
	size_t n = strlen(vs->names) + strlen(name) + 5;

	vs->names = xrealloc(vs->names, n);
	strcat(vs->names, " or ");
	strcat(vs->names, name);
}

SSL *tls_client_new_dane(SSL_CTX *ctx, const char *base, const char *const *extra_names,
                         size_t n_extra, const struct tls_tlsa *recs, size_t n_recs,
                         size_t *n_usable, char *why, size_t whylen)
{
	char host[HOST_MAX + 2], extra[HOST_MAX + 2];
	size_t usable = 0;
	struct verify_state *vs;
	SSL *ssl;
	int r;

	if (n_usable != NULL)
		*n_usable = 0;
	if (whylen > 0)
		why[0] = '\0';
	if (ctx == NULL || (recs == NULL && n_recs > 0) || (extra_names == NULL && n_extra > 0)) {
		snprintf(why, whylen, "invalid arguments");
		return NULL;
	}
	if (!host_copy(base, false, host, sizeof(host))) {
		snprintf(why, whylen, "TLSA base domain is not a host name");
		return NULL;
	}
	ERR_clear_error();
	/* c-anchors B.1, security-anchors §3.4: SNI = the TLSA base domain */
	ssl = new_ssl(ctx, host, false);
	if (ssl == NULL) {
		snprintf(why, whylen, "SSL_new: %s", tls_policy_ossl_reason());
		ERR_clear_error();
		return NULL;
	}
	vs = SSL_get_ex_data(ssl, get_idx());
	vs->dane = true;
	vs->base = xstrdup(host);
	vs->names = xstrdup(host);
	/* as for PKIX: DNS-IDs only, wildcards only as the whole left-most label */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	                           X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	/*
	 * The base domain becomes the primary reference name (SNI is already
	 * set, so it stays). Extra names with SSL_add1_host: SSL_set1_host
	 * would replace the base domain.
	 */
	r = SSL_dane_enable(ssl, host);
	if (r <= 0) {
		snprintf(why, whylen, "SSL_dane_enable: %s", tls_policy_ossl_reason());
		goto fail;
	}
	/* RFC 7672 §3.1.1: no name checks for DANE-EE(3) */
	SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
	for (size_t i = 0; i < n_extra; i++) {
		if (!host_copy(extra_names[i], true, extra, sizeof(extra))) {
			snprintf(why, whylen, "reference name %zu is not a host name", i + 1);
			goto fail;
		}
		if (!SSL_add1_host(ssl, extra)) {
			snprintf(why, whylen, "SSL_add1_host: %s", tls_policy_ossl_reason());
			goto fail;
		}
		append_name(vs, extra);
	}
	for (size_t i = 0; i < n_recs; i++) {
		const struct tls_tlsa *t = &recs[i];

		/*
		 * RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for
		 * SMTP. OpenSSL would accept them, and with them consult the
		 * trust store again, so they never reach it.
		 */
		if ((t->usage != TLSA_DANE_TA && t->usage != TLSA_DANE_EE) || t->data == NULL ||
		    t->len == 0) {
			continue;
		}
		r = SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype, t->data, t->len);
		if (r > 0) {
			usable++;
		} else if (r == 0) {
			/* unknown selector/mtype, wrong digest length, bad DER */
			ERR_clear_error();
		} else {
			snprintf(why, whylen, "SSL_dane_tlsa_add: %s", tls_policy_ossl_reason());
			goto fail;
		}
	}
	if (n_usable != NULL)
		*n_usable = usable;
	/*
	 * With no usable record OpenSSL would quietly verify against the
	 * trust store (PKIX), which is not DANE: refuse, the caller decides
	 * (RFC 7672 §2.2: TLS without authentication).
	 */
	if (usable == 0) {
		snprintf(why, whylen, "none of the %zu TLSA records for %s is usable", n_recs,
		         host);
		goto fail;
	}
	vs->n_usable = usable;
	ERR_clear_error();
	return ssl;
fail:
	SSL_free(ssl);
	ERR_clear_error();
	return NULL;
}

int tls_client_verify_dane(SSL *ssl, char *why, size_t whylen, char *matched, size_t matchedlen)
{
	struct verify_state *vs = ssl != NULL ? SSL_get_ex_data(ssl, get_idx()) : NULL;
	uint8_t usage = 0, selector = 0, mtype = 0;
	const unsigned char *data = NULL;
	size_t dlen = 0;
	X509 *leaf, *mcert = NULL;
	EVP_PKEY *mspki = NULL;
	int depth, err;
	long res;

	if (whylen > 0)
		why[0] = '\0';
	if (matchedlen > 0)
		matched[0] = '\0';
	if (vs == NULL || !vs->dane) {
		snprintf(why, whylen, "connection was not set up for DANE");
		return -1;
	}
	if (vs->n_usable == 0) {
		/* cannot happen through tls_client_new_dane; never PKIX by accident */
		snprintf(why, whylen, "no usable TLSA records for %s", vs->base);
		return -1;
	}
	if (!SSL_is_init_finished(ssl)) {
		snprintf(why, whylen, "TLS handshake is not complete");
		return -1;
	}
	leaf = SSL_get0_peer_certificate(ssl);
	if (leaf == NULL) {
		snprintf(why, whylen, "no certificate presented");
		return -1;
	}
	res = SSL_get_verify_result(ssl);
	/* < 0 unless verification succeeded and a TLSA record matched */
	depth = SSL_get0_dane_authority(ssl, &mcert, &mspki);
	if (res == X509_V_OK && depth >= 0 &&
	    SSL_get0_dane_tlsa(ssl, &usage, &selector, &mtype, &data, &dlen) == depth) {
		/*
		 * DANE-EE: the leaf matched, which is all RFC 7672 §3.1.1
		 * asks; its names and dates are not looked at. DANE-TA: the
		 * chain, dates and names were checked as well, so any error
		 * the callback saw is a failure even if OpenSSL says OK.
		 */
		if (usage == TLSA_DANE_EE && depth == 0) {
			snprintf(matched, matchedlen, "%u %u %u matched the server certificate",
			         usage, selector, mtype);
			return 0;
		}
		if (usage == TLSA_DANE_TA && vs->err == 0) {
			snprintf(matched, matchedlen,
			         "%u %u %u matched the trust anchor at depth %d", usage, selector,
			         mtype, depth);
			return 0;
		}
	}
	err = vs->err != 0 ? vs->err : (int)res;
	switch (err) {
	case X509_V_OK:
		/* verified, but not by a TLSA record: not DANE */
	case X509_V_ERR_DANE_NO_MATCH:
		snprintf(why, whylen, "TLSA records do not match the certificate of %s", vs->base);
		break;
	case X509_V_ERR_HOSTNAME_MISMATCH:
		/* only DANE-TA gets here: the chain matched, the name did not */
		snprintf(why, whylen, "certificate name does not match %s", vs->names);
		break;
	default:
		explain(vs, err, vs->err != 0 ? vs->depth : 0, leaf, vs->err != 0 ? vs->cert : NULL,
		        why, whylen);
		break;
	}
	return -1;
}

void tls_client_describe(SSL *ssl, char *buf, size_t len)
{
	tls_describe(ssl, buf, len);
}
