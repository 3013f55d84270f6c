/*
 * test_tls_client - outbound TLS: a test CA and leaf certificates made in
 * process, handshakes over BIO pairs against a server with each of them,
 * and the verdict of tls_client_verify() in its exact words (security-
 * anchors §4.1, §8 B 11 and G: valid, wrong name, expired, not yet valid,
 * self-signed, unknown issuer, untrusted root, wildcards, CN-only).
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

#define MX "mx.lab.example"

static char ca_path[] = "/tmp/test_tls_client.XXXXXX";
static EVP_PKEY *ca_key, *other_key, *leaf_key;
static X509 *ca, *other_ca;
static SSL_CTX *cctx; /* the client context under test */

static int group_setup(void **state)
{
	struct config c;
	char err[512] = "";
	FILE *fp;
	int fd;

	(void)state;
	ca_key = EVP_EC_gen("P-256");
	other_key = EVP_EC_gen("P-256");
	leaf_key = EVP_EC_gen("P-256");
	if (ca_key == NULL || other_key == NULL || leaf_key == NULL)
		return -1;
	ca = make_cert("strictmx test CA", NULL, NULL, "20991231000000Z", true, ca_key, NULL, NULL);
	other_ca = make_cert("somebody else's CA", NULL, NULL, NULL, true, other_key, NULL, NULL);
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
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(other_key);
	EVP_PKEY_free(leaf_key);
	unlink(ca_path);
	return 0;
}

/* server_ctx - a plain server with leaf (and chain certificate, if any) */
static SSL_CTX *server_ctx(X509 *leaf, X509 *chain, int max_version)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());

	assert_non_null(s);
	assert_int_equal(SSL_CTX_use_certificate(s, leaf), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(s, leaf_key), 1);
	if (chain != NULL)
		assert_int_equal(SSL_CTX_add1_chain_cert(s, chain), 1);
	if (max_version != 0)
		SSL_CTX_set_max_proto_version(s, max_version);
	return s;
}

/*
 * verify_against - handshake with a server presenting leaf (+chain) for
 * reference name host (+extra), and check tls_client_verify's verdict:
 * want NULL means it must verify.
 */
static void verify_against(X509 *leaf, X509 *chain, const char *host, const char *const *extra,
                           size_t n_extra, const char *want)
{
	SSL_CTX *sctx = server_ctx(leaf, chain, 0);
	SSL *c = tls_client_new_pkix(cctx, host, extra, n_extra);
	char why[512] = "unset";
	int rc;

	assert_non_null(c);
	/* SSL_VERIFY_NONE + the callback: the handshake completes either way */
	assert_int_equal(handshake(c, sctx, NULL), 0);
	rc = tls_client_verify(c, why, sizeof(why));
	if (want == NULL) {
		if (rc != 0)
			fail_msg("%s: expected verified, got \"%s\"", host, why);
	} else {
		assert_int_equal(rc, -1);
		assert_string_equal(why, want);
	}
	SSL_free(c);
	SSL_CTX_free(sctx);
}

static void test_tls_client_valid(void **state)
{
	X509 *leaf = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, ca, ca_key);
	SSL_CTX *sctx;
	SSL *c, *s = NULL;
	char desc[128];
	const char *sni;

	(void)state;
	verify_against(leaf, NULL, MX, NULL, 0, NULL);
	/* a trailing dot (as in DNS answers) and another case are the same name */
	verify_against(leaf, NULL, MX ".", NULL, 0, NULL);
	verify_against(leaf, NULL, "MX.Lab.Example", NULL, 0, NULL);

	/* SNI is the MX name; the description is Postfix's wording */
	sctx = server_ctx(leaf, NULL, 0);
	c = tls_client_new_pkix(cctx, MX ".", NULL, 0);
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, &s), 0);
	sni = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
	assert_non_null(sni);
	assert_string_equal(sni, MX);
	tls_client_describe(c, desc, sizeof(desc));
	assert_string_equal(desc, "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)");
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sctx);

	/* TLS 1.2 verifies the same way */
	sctx = server_ctx(leaf, NULL, TLS1_2_VERSION);
	c = tls_client_new_pkix(cctx, MX, NULL, 0);
	assert_int_equal(handshake(c, sctx, NULL), 0);
	assert_int_equal(tls_client_verify(c, desc, sizeof(desc)), 0);
	tls_client_describe(c, desc, sizeof(desc));
	assert_non_null(strstr(desc, "TLSv1.2 with cipher ECDHE-ECDSA-"));
	SSL_free(c);
	SSL_CTX_free(sctx);
	X509_free(leaf);
}

static void test_tls_client_wrong_name(void **state)
{
	X509 *leaf = make_cert("a.example", "DNS:a.example,DNS:b.example,IP:192.0.2.1", NULL, NULL,
	                       false, leaf_key, ca, ca_key);
	static const char *const extra[] = {"z.example"};
	static const char *const good_extra[] = {"b.example"};

	(void)state;
	verify_against(leaf, NULL, "mx1.example.org", NULL, 0,
	               "certificate name does not match mx1.example.org (certificate names: "
	               "a.example, b.example)");
	verify_against(leaf, NULL, "mx1.example.org", extra, 1,
	               "certificate name does not match mx1.example.org or z.example "
	               "(certificate names: a.example, b.example)");
	/* an extra reference name (e.g. a [domain] match) may be the one that matches */
	verify_against(leaf, NULL, "mx1.example.org", good_extra, 1, NULL);
	X509_free(leaf);

	/* RFC 9525 §6.3: the subject CN is never a name */
	leaf = make_cert(MX, NULL, NULL, NULL, false, leaf_key, ca, ca_key);
	verify_against(leaf, NULL, MX, NULL, 0,
	               "certificate name does not match " MX " (the certificate has no DNS names)");
	X509_free(leaf);
}

static void test_tls_client_dates(void **state)
{
	X509 *leaf = make_cert(MX, "DNS:" MX, "20200101000000Z", "20200131120000Z", false, leaf_key,
	                       ca, ca_key);

	(void)state;
	verify_against(leaf, NULL, MX, NULL, 0, "certificate has expired (notAfter 2020-01-31)");
	X509_free(leaf);
	leaf = make_cert(MX, "DNS:" MX, "20990101000000Z", "20991231000000Z", false, leaf_key, ca,
	                 ca_key);
	verify_against(leaf, NULL, MX, NULL, 0,
	               "certificate is not yet valid (notBefore 2099-01-01)");
	X509_free(leaf);
}

static void test_tls_client_untrusted(void **state)
{
	X509 *self = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, NULL, NULL);
	X509 *stranger = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, other_ca, other_key);

	(void)state;
	verify_against(self, NULL, MX, NULL, 0, "certificate is self-signed");
	verify_against(stranger, NULL, MX, NULL, 0,
	               "certificate issuer is unknown (unable to get local issuer certificate)");
	verify_against(stranger, other_ca, MX, NULL, 0,
	               "certificate chain ends in an untrusted root (self-signed certificate in "
	               "certificate chain)");
	X509_free(self);
	X509_free(stranger);
}

static void test_tls_client_wildcards(void **state)
{
	X509 *wild = make_cert("w", "DNS:*.lab.example", NULL, NULL, false, leaf_key, ca, ca_key);
	X509 *partial =
	    make_cert("p", "DNS:mx*.lab.example", NULL, NULL, false, leaf_key, ca, ca_key);

	(void)state;
	verify_against(wild, NULL, "a.lab.example", NULL, 0, NULL);
	verify_against(wild, NULL, "b.a.lab.example", NULL, 0,
	               "certificate name does not match b.a.lab.example (certificate names: "
	               "*.lab.example)");
	verify_against(wild, NULL, "lab.example", NULL, 0,
	               "certificate name does not match lab.example (certificate names: "
	               "*.lab.example)");
	/* RFC 9525 §6.3: a wildcard only as the whole left-most label */
	verify_against(partial, NULL, "mx1.lab.example", NULL, 0,
	               "certificate name does not match mx1.lab.example (certificate names: "
	               "mx*.lab.example)");
	X509_free(wild);
	X509_free(partial);
}

static void test_tls_client_idn_a_labels(void **state)
{
	/*
	 * security-anchors case 51 (RFC 9525 §6.3): an IDN compares in A-label
	 * form, case-insensitively; a U-label reference name is refused, never
	 * compared byte by byte. "bücher" is "xn--bcher-kva".
	 */
	X509 *idn =
	    make_cert("i", "DNS:mx.xn--bcher-kva.example", NULL, NULL, false, leaf_key, ca, ca_key);
	X509 *wild =
	    make_cert("w", "DNS:*.xn--bcher-kva.example", NULL, NULL, false, leaf_key, ca, ca_key);
	static const char *const u_label[] = {"mx.b\xc3\xbc"
	                                      "cher.example"};
	SSL_CTX *sctx = server_ctx(idn, NULL, 0);
	SSL *c, *s = NULL;

	(void)state;
	verify_against(idn, NULL, "mx.xn--bcher-kva.example", NULL, 0, NULL);
	verify_against(idn, NULL, "MX.XN--BCHER-KVA.example", NULL, 0, NULL);
	verify_against(wild, NULL, "mx.xn--bcher-kva.example", NULL, 0, NULL);
	/* another A-label (xn--bcher-kvb) is another name */
	verify_against(idn, NULL, "mx.xn--bcher-kvb.example", NULL, 0,
	               "certificate name does not match mx.xn--bcher-kvb.example (certificate "
	               "names: mx.xn--bcher-kva.example)");
	/* U-labels are not host names here: no SSL is made for them */
	assert_null(tls_client_new_pkix(cctx, u_label[0], NULL, 0));
	assert_null(tls_client_new_pkix(cctx, MX, u_label, 1));

	/* SNI goes out in A-label form, exactly as given (security-anchors §4.3) */
	c = tls_client_new_pkix(cctx, "mx.xn--bcher-kva.example", NULL, 0);
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, &s), 0);
	assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name),
	                    "mx.xn--bcher-kva.example");
	SSL_free(s);
	SSL_free(c);
	SSL_CTX_free(sctx);
	X509_free(idn);
	X509_free(wild);
}

static void test_tls_client_encrypt_only_and_misuse(void **state)
{
	X509 *self = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, NULL, NULL);
	SSL_CTX *sctx = server_ctx(self, NULL, 0);
	SSL *c, *s = NULL;
	char why[256];
	static const char *const bad_extra[] = {"*.lab.example"};

	(void)state;
	/* encrypt-only: the handshake works, SNI is sent, nothing is "verified" */
	c = tls_client_new_encrypt_only(cctx, MX);
	assert_non_null(c);
	assert_int_equal(handshake(c, sctx, &s), 0);
	assert_string_equal(SSL_get_servername(s, TLSEXT_NAMETYPE_host_name), MX);
	assert_int_equal(tls_client_verify(c, why, sizeof(why)), -1);
	assert_string_equal(why, "no reference name was set (encrypt-only): not verified");
	SSL_free(s);
	SSL_free(c);

	/* before a handshake there is nothing to verify */
	c = tls_client_new_pkix(cctx, MX, NULL, 0);
	assert_int_equal(tls_client_verify(c, why, sizeof(why)), -1);
	assert_string_equal(why, "TLS handshake is not complete");
	SSL_free(c);

	/* names that are not host names are refused */
	assert_null(tls_client_new_pkix(cctx, "", NULL, 0));
	assert_null(tls_client_new_pkix(cctx, NULL, NULL, 0));
	assert_null(tls_client_new_pkix(cctx, "mx.example\r\nx", NULL, 0));
	assert_null(tls_client_new_pkix(cctx, "a..example", NULL, 0));
	assert_null(tls_client_new_pkix(cctx, MX, bad_extra, 1));
	assert_null(tls_client_new_encrypt_only(cctx, "bad name"));
	assert_int_equal(tls_client_verify(NULL, why, sizeof(why)), -1);
	SSL_CTX_free(sctx);
	X509_free(self);
}

static void test_tls_client_ctx(void **state)
{
	struct config c;
	char err[512] = "";
	SSL_CTX *ctx;

	(void)state;
	/* the system store when no ca_file */
	memset(&c, 0, sizeof(c));
	ctx = tls_client_ctx_new(&c, err, sizeof(err));
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
	assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
	assert_int_equal(SSL_CTX_get_session_cache_mode(ctx), SSL_SESS_CACHE_OFF);
	assert_true(SSL_CTX_get_options(ctx) & SSL_OP_IGNORE_UNEXPECTED_EOF);
	assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
	assert_non_null(SSL_CTX_get_verify_callback(ctx));
	assert_int_equal(SSL_CTX_get_security_level(ctx), 2);
	SSL_CTX_free(ctx);

	c.ca_file = "/nonexistent/ca.pem";
	assert_null(tls_client_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "[outbound] ca_file /nonexistent/ca.pem: "));

	memset(&c, 0, sizeof(c));
	c.out_protocols = "TLSv1.1 TLSv1.2";
	assert_null(tls_client_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "[outbound] protocols: unsupported protocol \"TLSv1.1\""));

	memset(&c, 0, sizeof(c));
	c.out_ciphers = "NO-SUCH-CIPHER";
	assert_null(tls_client_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "[outbound] ciphers"));

	memset(&c, 0, sizeof(c));
	c.out_protocols = "TLSv1.3";
	ctx = tls_client_ctx_new(&c, err, sizeof(err));
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
	SSL_CTX_free(ctx);
}

static void test_tls_client_refuses_old_server(void **state)
{
	X509 *leaf = make_cert(MX, "DNS:" MX, NULL, NULL, false, leaf_key, ca, ca_key);
	SSL_CTX *sctx = server_ctx(leaf, NULL, TLS1_1_VERSION);
	SSL *c = tls_client_new_pkix(cctx, MX, NULL, 0);

	(void)state;
	SSL_CTX_set_security_level(sctx, 0);
	SSL_CTX_set_min_proto_version(sctx, TLS1_VERSION);
	assert_int_equal(handshake(c, sctx, NULL), -1);
	SSL_free(c);
	SSL_CTX_free(sctx);
	X509_free(leaf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls_client_valid),
	    cmocka_unit_test(test_tls_client_wrong_name),
	    cmocka_unit_test(test_tls_client_dates),
	    cmocka_unit_test(test_tls_client_untrusted),
	    cmocka_unit_test(test_tls_client_wildcards),
	    cmocka_unit_test(test_tls_client_idn_a_labels),
	    cmocka_unit_test(test_tls_client_encrypt_only_and_misuse),
	    cmocka_unit_test(test_tls_client_ctx),
	    cmocka_unit_test(test_tls_client_refuses_old_server),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
