/*
 * test_tls_dane - outbound DANE (RFC 7672, RFC 7671): a test CA and leaf
 * certificates made in process, TLSA records computed from them, handshakes
 * over BIO pairs, and the verdict of tls_client_verify_dane() in its exact
 * words (security-anchors §3, c-anchors B.1): DANE-EE ignores names and
 * dates, DANE-TA checks the name, usages 0/1 and malformed records are never
 * loaded, and the trust store is never a fallback.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/config.h"
#include "tls/client.h"
#include "testcert.h"

#define MX "mx.example.lab"

static char ca_path[] = "/tmp/test_tls_dane.XXXXXX";
static EVP_PKEY *ca_key, *other_ca_key, *leaf_key, *other_key;
static X509 *ca, *other_ca;
static X509 *leaf;    /* MX, signed by ca, valid */
static X509 *expired; /* MX, signed by ca, expired in 2020 */
static X509 *wrong;   /* other.example.lab, signed by ca */
static X509 *other;   /* MX, signed by ca, with other_key */
static SSL_CTX *cctx; /* the client context under test: ca is in its trust store */

/* a TLSA record with its data kept alongside */
struct rec {
	struct tls_tlsa t;
	unsigned char buf[EVP_MAX_MD_SIZE];
};

/*
 * tlsa_mtype - the record "usage selector mtype" for x: SHA2-256 (mtype 1)
 * or SHA2-512 (mtype 2) of the certificate DER (selector 0) or of its
 * SubjectPublicKeyInfo DER (selector 1). Not X509_pubkey_digest(), which
 * hashes the key bits without the algorithm.
 */
static struct rec tlsa_mtype(uint8_t usage, uint8_t selector, uint8_t mtype, X509 *x)
{
	struct rec r;
	unsigned char *der = NULL;
	unsigned int mdlen = 0;
	int n;

	memset(&r, 0, sizeof(r));
	if (selector == 0)
		n = i2d_X509(x, &der);
	else
		n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
	assert_true(n > 0);
	assert_true(mtype == 1 || mtype == 2);
	assert_int_equal(EVP_Digest(der, (size_t)n, r.buf, &mdlen,
	                            mtype == 1 ? EVP_sha256() : EVP_sha512(), NULL),
	                 1);
	assert_int_equal(mdlen, mtype == 1 ? 32 : 64);
	OPENSSL_free(der);
	r.t.usage = usage;
	r.t.selector = selector;
	r.t.mtype = mtype;
	r.t.len = mdlen;
	return r;
}

/* tlsa - the SHA2-256 record "usage selector 1" for x */
static struct rec tlsa(uint8_t usage, uint8_t selector, X509 *x)
{
	return tlsa_mtype(usage, selector, 1, x);
}

/* recs - the tls_tlsa array for n recs (data pointing into them) */
static void recs(struct rec *r, size_t n, struct tls_tlsa *out)
{
	for (size_t i = 0; i < n; i++) {
		out[i] = r[i].t;
		out[i].data = r[i].buf;
	}
}

static int group_setup(void **state)
{
	struct config c;
	char err[512] = "";
	FILE *fp;
	int fd;

	(void)state;
	ca_key = EVP_EC_gen("P-256");
	other_ca_key = EVP_EC_gen("P-256");
	leaf_key = EVP_EC_gen("P-256");
	other_key = EVP_EC_gen("P-256");
	if (ca_key == NULL || other_ca_key == NULL || leaf_key == NULL || other_key == NULL)
		return -1;
	ca = make_cert("strictmx test CA", NULL, NULL, "20991231000000Z", true, ca_key, NULL, NULL);
	other_ca =
	    make_cert("somebody else's CA", NULL, NULL, NULL, true, other_ca_key, NULL, NULL);
	leaf = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, ca, ca_key);
	expired = make_cert(MX, "DNS:" MX, "20200101000000Z", "20200131120000Z", false, leaf_key,
	                    ca, ca_key);
	wrong = make_cert("other.example.lab", "DNS:other.example.lab", NULL, NULL, false, leaf_key,
	                  ca, ca_key);
	other = make_cert(MX, "DNS:" MX, NULL, NULL, false, other_key, ca, ca_key);

	/* the CA is a PKIX trust anchor of the context: DANE must not use it */
	fd = mkstemp(ca_path);
	if (fd < 0)
		return -1;
	fp = fdopen(fd, "w");
	if (fp == NULL || !PEM_write_X509(fp, ca))
		return -1;
	fclose(fp);
	memset(&c, 0, sizeof(c));
	c.ca_file = ca_path;
	cctx = tls_client_ctx_new(&c, err, sizeof(err));
	if (cctx == NULL) {
		fprintf(stderr, "tls_client_ctx_new: %s\n", err);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	SSL_CTX_free(cctx);
	X509_free(ca);
	X509_free(other_ca);
	X509_free(leaf);
	X509_free(expired);
	X509_free(wrong);
	X509_free(other);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(other_ca_key);
	EVP_PKEY_free(leaf_key);
	EVP_PKEY_free(other_key);
	unlink(ca_path);
	return 0;
}

/* server_ctx - a plain server with cert/key (and chain certificate, if any) */
static SSL_CTX *server_ctx(X509 *cert, EVP_PKEY *key, X509 *chain)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());

	assert_non_null(s);
	assert_int_equal(SSL_CTX_use_certificate(s, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(s, key), 1);
	if (chain != NULL)
		assert_int_equal(SSL_CTX_add1_chain_cert(s, chain), 1);
	return s;
}

/*
 * dane_against - handshake with a server presenting cert (+chain) for TLSA
 * base domain base (+extra) and records r, and check the verdict: want_ok
 * with the matched text, or the failure in want. Returns nothing; asserts.
 */
static void dane_against(X509 *cert, EVP_PKEY *key, X509 *chain, const char *base,
                         const char *const *extra, size_t n_extra, struct rec *r, size_t n,
                         const char *want_matched, const char *want_why)
{
	SSL_CTX *sctx = server_ctx(cert, key, chain);
	struct tls_tlsa t[8];
	char why[512] = "unset", matched[128] = "unset", why2[512] = "unset";
	size_t usable = 99;
	SSL *c;
	int rc;

	assert_true(n <= 8);
	recs(r, n, t);
	c = tls_client_new_dane(cctx, base, extra, n_extra, t, n, &usable, why, sizeof(why));
	if (c == NULL)
		fail_msg("tls_client_new_dane(%s): %s", base, why);
	assert_true(usable >= 1);
	/* SSL_VERIFY_NONE + the callback: the handshake completes either way */
	assert_int_equal(handshake(c, sctx, NULL), 0);
	rc = tls_client_verify_dane(c, why, sizeof(why), matched, sizeof(matched));
	if (want_why == NULL) {
		if (rc != 0)
			fail_msg("%s: expected DANE-verified, got \"%s\"", base, why);
		assert_string_equal(matched, want_matched);
		assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
	} else {
		assert_int_equal(rc, -1);
		assert_string_equal(why, want_why);
		assert_string_equal(matched, "");
	}
	/* tls_client_verify gives the same verdict on a DANE connection */
	assert_int_equal(tls_client_verify(c, why2, sizeof(why2)), rc);
	if (want_why != NULL)
		assert_string_equal(why2, want_why);
	SSL_free(c);
	SSL_CTX_free(sctx);
}

static void test_tls_dane_ee_spki(void **state)
{
	struct rec r = tlsa(3, 1, leaf);
	struct rec both[2] = {tlsa(3, 1, other), tlsa(3, 1, leaf)};

	(void)state;
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &r, 1,
	             "3 1 1 matched the server certificate", NULL);
	/* any record of the RRset may match (key rollover, security-anchors §3.6) */
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, both, 2,
	             "3 1 1 matched the server certificate", NULL);
	/* with the CA chain sent too, the leaf still matches at depth 0 */
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &r, 1, "3 1 1 matched the server certificate",
	             NULL);
}

static void test_tls_dane_ee_ignores_dates_and_names(void **state)
{
	struct rec r = tlsa(3, 1, expired);
	struct rec rw = tlsa(3, 1, wrong);
	X509 *self = make_cert("nobody", NULL, NULL, NULL, false, leaf_key, NULL, NULL);
	struct rec rs = tlsa(3, 0, self);

	(void)state;
	/* RFC 7672 §3.1.1: no expiry checks for DANE-EE(3) */
	dane_against(expired, leaf_key, NULL, MX, NULL, 0, &r, 1,
	             "3 1 1 matched the server certificate", NULL);
	/* ... and no name checks */
	dane_against(wrong, leaf_key, NULL, MX, NULL, 0, &rw, 1,
	             "3 1 1 matched the server certificate", NULL);
	/* ... and no issuer: a self-signed leaf without names is fine */
	dane_against(self, leaf_key, NULL, MX, NULL, 0, &rs, 1,
	             "3 0 1 matched the server certificate", NULL);
	X509_free(self);
}

static void test_tls_dane_ee_mismatch(void **state)
{
	struct rec r = tlsa(3, 1, other);

	(void)state;
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &r, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	/* a trailing dot in the base domain is not part of the name */
	dane_against(leaf, leaf_key, ca, MX ".", NULL, 0, &r, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
}

static void test_tls_dane_ee_full_cert(void **state)
{
	struct rec r = tlsa(3, 0, leaf);
	struct rec rx = tlsa(3, 0, other); /* same name, other certificate */

	(void)state;
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &r, 1,
	             "3 0 1 matched the server certificate", NULL);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &rx, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
}

static void test_tls_dane_ta(void **state)
{
	struct rec r201 = tlsa(2, 0, ca);
	struct rec r211 = tlsa(2, 1, ca);
	static const char *const pre_cname[] = {"other.example.lab"};

	(void)state;
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &r201, 1,
	             "2 0 1 matched the trust anchor at depth 1", NULL);
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &r211, 1,
	             "2 1 1 matched the trust anchor at depth 1", NULL);
	/* an extra name (MX name before CNAME expansion) may be the one that matches */
	dane_against(wrong, leaf_key, ca, MX, pre_cname, 1, &r201, 1,
	             "2 0 1 matched the trust anchor at depth 1", NULL);
}

static void test_tls_dane_ta_name_and_dates(void **state)
{
	struct rec r = tlsa(2, 0, ca);
	static const char *const extra[] = {"mx2.example.lab"};

	(void)state;
	/* DANE-TA: names are checked (RFC 7672 §3.1.2) */
	dane_against(wrong, leaf_key, ca, MX, NULL, 0, &r, 1, NULL,
	             "certificate name does not match " MX);
	dane_against(wrong, leaf_key, ca, MX, extra, 1, &r, 1, NULL,
	             "certificate name does not match " MX " or mx2.example.lab");
	/* ... and so are dates, below a trust anchor */
	dane_against(expired, leaf_key, ca, MX, NULL, 0, &r, 1, NULL,
	             "certificate has expired (notAfter 2020-01-31)");
}

static void test_tls_dane_ta_recipient_domain_and_wildcards(void **state)
{
	/* security-anchors case 36, under a 2 0 1 record for the CA the server sends */
	struct rec r = tlsa(2, 0, ca);
	struct rec r211 = tlsa(2, 1, ca);
	static const char *const nexthop[] = {"example.lab"};
	X509 *dom =
	    make_cert("example.lab", "DNS:example.lab", NULL, NULL, false, leaf_key, ca, ca_key);
	X509 *wild = make_cert("w", "DNS:*.example.lab", NULL, NULL, false, leaf_key, ca, ca_key);
	X509 *partial =
	    make_cert("p", "DNS:m*.example.lab", NULL, NULL, false, leaf_key, ca, ca_key);

	(void)state;
	/* SAN = the recipient domain, given as a reference name: accepted */
	dane_against(dom, leaf_key, ca, MX, nexthop, 1, &r, 1,
	             "2 0 1 matched the trust anchor at depth 1", NULL);
	dane_against(dom, leaf_key, ca, MX, nexthop, 1, &r211, 1,
	             "2 1 1 matched the trust anchor at depth 1", NULL);
	/* ... and only as a reference name: the MX name alone does not match it */
	dane_against(dom, leaf_key, ca, MX, NULL, 0, &r, 1, NULL,
	             "certificate name does not match " MX);
	/* *.example.lab covers exactly one label: mx.example.lab, not a.mx.example.lab */
	dane_against(wild, leaf_key, ca, MX, NULL, 0, &r, 1,
	             "2 0 1 matched the trust anchor at depth 1", NULL);
	dane_against(wild, leaf_key, ca, "a." MX, NULL, 0, &r, 1, NULL,
	             "certificate name does not match a." MX);
	dane_against(wild, leaf_key, ca, "example.lab", NULL, 0, &r, 1, NULL,
	             "certificate name does not match example.lab");
	/* RFC 9525 §6.3: a partial-label wildcard never matches */
	dane_against(partial, leaf_key, ca, MX, NULL, 0, &r, 1, NULL,
	             "certificate name does not match " MX);
	X509_free(dom);
	X509_free(wild);
	X509_free(partial);
}

static void test_tls_dane_ta_record_for_the_leaf(void **state)
{
	/*
	 * security-anchors case 37 (Postfix tls_dane.sh "non-TA", "depth 0
	 * TA"): a DANE-TA record that matches the leaf itself is not a trust
	 * anchor, even though the leaf is exactly the certificate published.
	 */
	struct rec r201 = tlsa(2, 0, leaf);
	struct rec r211 = tlsa(2, 1, leaf);
	X509 *self = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, NULL, NULL);
	struct rec rs = tlsa(2, 0, self);

	(void)state;
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &r201, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &r211, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	/* a self-signed leaf named in a 2 0 1 record: still not a trust anchor */
	dane_against(self, leaf_key, NULL, MX, NULL, 0, &rs, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	X509_free(self);
}

static void test_tls_dane_digest_agility(void **state)
{
	/*
	 * security-anchors case 47, RFC 7671 §9: for one usage and selector,
	 * only records of the strongest digest present are used (OpenSSL's
	 * default order: SHA2-512 above SHA2-256). Pinned here:
	 * {3 1 1 good, 3 1 2 bad} fails, {3 1 1 bad, 3 1 2 good} verifies, and
	 * records of another selector are judged on their own.
	 */
	struct rec good256_bad512[2] = {tlsa_mtype(3, 1, 1, leaf), tlsa_mtype(3, 1, 2, other)};
	struct rec bad256_good512[2] = {tlsa_mtype(3, 1, 1, other), tlsa_mtype(3, 1, 2, leaf)};
	struct rec other_selector[2] = {tlsa_mtype(3, 1, 1, leaf), tlsa_mtype(3, 0, 2, other)};
	struct rec only512 = tlsa_mtype(3, 1, 2, leaf);

	(void)state;
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &only512, 1,
	             "3 1 2 matched the server certificate", NULL);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, good256_bad512, 2, NULL,
	             "TLSA records do not match the certificate of " MX);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, bad256_good512, 2,
	             "3 1 2 matched the server certificate", NULL);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, other_selector, 2,
	             "3 1 1 matched the server certificate", NULL);
}

static void test_tls_dane_ta_not_sent(void **state)
{
	struct rec r = tlsa(2, 0, ca);

	(void)state;
	/* a digest TA record needs the TA in the chain (security-anchors §3.6) */
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, &r, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
}

static void test_tls_dane_no_pkix_fallback(void **state)
{
	/* the chain verifies to the context's trust store, but no TLSA matches */
	struct rec ee = tlsa(3, 1, other);
	struct rec ta = tlsa(2, 0, other_ca);
	struct rec both[2] = {tlsa(3, 1, other), tlsa(2, 1, other_ca)};

	(void)state;
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &ee, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, &ta, 1, NULL,
	             "TLSA records do not match the certificate of " MX);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, both, 2, NULL,
	             "TLSA records do not match the certificate of " MX);
}

static void test_tls_dane_unusable_records(void **state)
{
	/* PKIX-TA and PKIX-EE for the very chain the server sends */
	struct rec pkix[2] = {tlsa(0, 0, ca), tlsa(1, 1, leaf)};
	struct rec mix[2] = {tlsa(0, 0, ca), tlsa(3, 1, other)};
	struct rec bad[2] = {tlsa(3, 1, leaf), tlsa(2, 0, ca)};
	struct tls_tlsa t[2];
	char why[256] = "unset";
	size_t usable = 99;
	SSL *c;

	(void)state;
	/*
	 * a mix of 0 and 3: only the 3 is loaded, and it decides. Were the
	 * 0 0 1 loaded, the trust store would be consulted and this would pass.
	 */
	dane_against(leaf, leaf_key, ca, MX, NULL, 0, mix, 2, NULL,
	             "TLSA records do not match the certificate of " MX);
	usable = 99;
	recs(mix, 2, t);
	c = tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(usable, 1);
	SSL_free(c);

	/* RFC 7672 §3.1.3: usages 0/1 are unusable, so no DANE at all */
	recs(pkix, 2, t);
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why)));
	assert_int_equal(usable, 0);
	assert_string_equal(why, "none of the 2 TLSA records for " MX " is usable");

	/* a 31-byte SHA-256 digest, unknown selector, mtype, usage: unusable */
	bad[0].t.len = 31;
	bad[1].t.selector = 2;
	recs(bad, 2, t);
	usable = 99;
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why)));
	assert_int_equal(usable, 0);
	bad[1] = tlsa(2, 0, ca);
	bad[1].t.mtype = 3;
	recs(bad, 2, t);
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why)));
	bad[1] = tlsa(4, 0, ca);
	recs(bad, 2, t);
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why)));
	t[1].data = NULL;
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why)));
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, t, 0, &usable, why, sizeof(why)));
	assert_string_equal(why, "none of the 0 TLSA records for " MX " is usable");

	/* a malformed record beside a good one: one usable, and it matches */
	bad[0].t.len = 31;
	bad[1] = tlsa(3, 1, leaf);
	recs(bad, 2, t);
	usable = 99;
	c = tls_client_new_dane(cctx, MX, NULL, 0, t, 2, &usable, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(usable, 1);
	SSL_free(c);
	dane_against(leaf, leaf_key, NULL, MX, NULL, 0, bad, 2,
	             "3 1 1 matched the server certificate", NULL);
}

static void test_tls_dane_sni(void **state)
{
	struct rec r = tlsa(3, 1, leaf);
	static const char *const extra[] = {"mx-alias.example.lab."};
	SSL_CTX *sctx = server_ctx(leaf, leaf_key, NULL);
	struct tls_tlsa t;
	char why[256], matched[128];
	SSL *c, *s = NULL;

	(void)state;
	recs(&r, 1, &t);
	/* SNI = the TLSA base domain (RFC 7672 §8.1), not an extra name */
	c = tls_client_new_dane(cctx, MX ".", extra, 1, &t, 1, NULL, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, &s), 0);
	assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name), MX);
	assert_int_equal(tls_client_verify_dane(c, why, sizeof(why), matched, sizeof(matched)), 0);
	assert_string_equal(matched, "3 1 1 matched the server certificate");
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sctx);
}

/*
 * pkix_after - a DANE handshake (record 3 1 1 of cert, so DANE itself
 * verifies) against a server presenting cert (+chain); then the PKIX verdict
 * on that finished handshake must equal a real PKIX handshake's, in words
 * (want_why NULL: both verified).
 */
static void pkix_after(X509 *cert, EVP_PKEY *key, X509 *chain, const char *const *extra,
                       size_t n_extra, const char *want_why)
{
	SSL_CTX *sctx = server_ctx(cert, key, chain);
	struct rec r = tlsa(3, 1, cert);
	struct tls_tlsa t;
	char why[512] = "unset", why2[512] = "unset", matched[128];
	SSL *c;
	int rc, rc2;

	recs(&r, 1, &t);
	c = tls_client_new_dane(cctx, MX, extra, n_extra, &t, 1, NULL, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, NULL), 0);
	assert_int_equal(tls_client_verify_dane(c, why, sizeof(why), matched, sizeof(matched)), 0);
	rc = tls_client_verify_pkix_after(cctx, c, MX, extra, n_extra, why, sizeof(why));
	SSL_free(c);

	c = tls_client_new_pkix(cctx, MX, extra, n_extra);
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, NULL), 0);
	rc2 = tls_client_verify(c, why2, sizeof(why2));
	SSL_free(c);
	SSL_CTX_free(sctx);

	assert_int_equal(rc, rc2);
	assert_string_equal(why, why2);
	if (want_why == NULL) {
		assert_int_equal(rc, 0);
		assert_string_equal(why, "");
	} else {
		assert_int_equal(rc, -1);
		assert_string_equal(why, want_why);
	}
}

static void test_tls_dane_pkix_after(void **state)
{
	static const char *const other_name[] = {"other.example.lab"};
	X509 *self = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, NULL, NULL);
	X509 *foreign =
	    make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, other_ca, other_ca_key);
	SSL_CTX *sctx = server_ctx(leaf, leaf_key, NULL);
	struct rec r = tlsa(3, 1, leaf);
	struct tls_tlsa t;
	char why[256];
	SSL *c;

	(void)state;
	/* the chain as sent, or the leaf alone (its issuer is in the trust store) */
	pkix_after(leaf, leaf_key, ca, NULL, 0, NULL);
	pkix_after(leaf, leaf_key, NULL, NULL, 0, NULL);
	/* DANE-EE took these; PKIX would not, and says why as tls_client_verify does */
	pkix_after(expired, leaf_key, ca, NULL, 0, "certificate has expired (notAfter 2020-01-31)");
	pkix_after(wrong, leaf_key, ca, NULL, 0,
	           "certificate name does not match " MX " (certificate names: other.example.lab)");
	pkix_after(self, leaf_key, NULL, NULL, 0, "certificate is self-signed");
	pkix_after(foreign, leaf_key, other_ca, NULL, 0,
	           "certificate chain ends in an untrusted root (self-signed certificate in "
	           "certificate chain)");
	/* extra reference names count as for tls_client_new_pkix */
	pkix_after(wrong, leaf_key, ca, other_name, 1, NULL);

	/* misuse: before the handshake, no SSL, a name that is not one */
	recs(&r, 1, &t);
	c = tls_client_new_dane(cctx, MX, NULL, 0, &t, 1, NULL, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(tls_client_verify_pkix_after(cctx, c, MX, NULL, 0, why, sizeof(why)), -1);
	assert_string_equal(why, "TLS handshake is not complete");
	assert_int_equal(tls_client_verify_pkix_after(cctx, NULL, MX, NULL, 0, why, sizeof(why)),
	                 -1);
	assert_int_equal(handshake(c, sctx, NULL), 0);
	assert_int_equal(
	    tls_client_verify_pkix_after(cctx, c, "mx\r\n.lab", NULL, 0, why, sizeof(why)), -1);
	assert_string_equal(why, "cannot set up TLS for this host name");
	SSL_free(c);
	SSL_CTX_free(sctx);
	X509_free(self);
	X509_free(foreign);
}

static void test_tls_dane_misuse(void **state)
{
	struct rec r = tlsa(3, 1, leaf);
	static const char *const bad_extra[] = {"*.example.lab"};
	SSL_CTX *sctx = server_ctx(leaf, leaf_key, NULL), *plain;
	struct tls_tlsa t;
	char why[256], matched[128];
	size_t usable = 99;
	SSL *c;

	(void)state;
	recs(&r, 1, &t);
	/* before a handshake there is nothing to verify */
	c = tls_client_new_dane(cctx, MX, NULL, 0, &t, 1, &usable, why, sizeof(why));
	assert_non_null(c);
	assert_int_equal(tls_client_verify_dane(c, why, sizeof(why), matched, sizeof(matched)), -1);
	assert_string_equal(why, "TLS handshake is not complete");
	SSL_free(c);

	/* a PKIX connection is not a DANE one, even when it verifies */
	c = tls_client_new_pkix(cctx, MX, NULL, 0);
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, NULL), 0);
	assert_int_equal(tls_client_verify(c, why, sizeof(why)), 0);
	assert_int_equal(tls_client_verify_dane(c, why, sizeof(why), matched, sizeof(matched)), -1);
	assert_string_equal(why, "connection was not set up for DANE");
	SSL_free(c);
	assert_int_equal(tls_client_verify_dane(NULL, why, sizeof(why), matched, sizeof(matched)),
	                 -1);

	/* names that are not host names are refused */
	assert_null(tls_client_new_dane(cctx, "", NULL, 0, &t, 1, &usable, why, sizeof(why)));
	assert_string_equal(why, "TLSA base domain is not a host name");
	assert_null(tls_client_new_dane(cctx, NULL, NULL, 0, &t, 1, &usable, why, sizeof(why)));
	assert_null(
	    tls_client_new_dane(cctx, "mx\r\n.example", NULL, 0, &t, 1, &usable, why, sizeof(why)));
	assert_null(tls_client_new_dane(cctx, MX, bad_extra, 1, &t, 1, &usable, why, sizeof(why)));
	assert_string_equal(why, "reference name 1 is not a host name");
	assert_null(tls_client_new_dane(cctx, MX, NULL, 0, NULL, 1, &usable, why, sizeof(why)));

	/* a context without SSL_CTX_dane_enable cannot do DANE */
	plain = SSL_CTX_new(TLS_client_method());
	assert_non_null(plain);
	assert_null(tls_client_new_dane(plain, MX, NULL, 0, &t, 1, &usable, why, sizeof(why)));
	assert_non_null(strstr(why, "SSL_dane_enable: "));
	SSL_CTX_free(plain);
	SSL_CTX_free(sctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls_dane_ee_spki),
	    cmocka_unit_test(test_tls_dane_ee_ignores_dates_and_names),
	    cmocka_unit_test(test_tls_dane_ee_mismatch),
	    cmocka_unit_test(test_tls_dane_ee_full_cert),
	    cmocka_unit_test(test_tls_dane_ta),
	    cmocka_unit_test(test_tls_dane_ta_name_and_dates),
	    cmocka_unit_test(test_tls_dane_ta_recipient_domain_and_wildcards),
	    cmocka_unit_test(test_tls_dane_ta_record_for_the_leaf),
	    cmocka_unit_test(test_tls_dane_digest_agility),
	    cmocka_unit_test(test_tls_dane_ta_not_sent),
	    cmocka_unit_test(test_tls_dane_no_pkix_fallback),
	    cmocka_unit_test(test_tls_dane_unusable_records),
	    cmocka_unit_test(test_tls_dane_sni),
	    cmocka_unit_test(test_tls_dane_pkix_after),
	    cmocka_unit_test(test_tls_dane_misuse),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
