/*
 * testcert.h - X.509 certificates made in process for the TLS unit tests
 * (test_tls_client, test_tls_dane): a CA, leaves with SAN lists and chosen
 * validity, self-signed ones. Needs cmocka.h and the OpenSSL headers first.
 */
#ifndef STRICTMX_TESTS_TESTCERT_H
#define STRICTMX_TESTS_TESTCERT_H

#include <stdbool.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static inline void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
	assert_non_null(ext);
	assert_int_equal(X509_add_ext(x, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

/*
 * make_cert - CN, SAN list ("DNS:a,DNS:b" or NULL), validity (times as
 * "YYYYMMDDHHMMSSZ", or NULL for now-1h .. now+1d), signed by issuer/ikey
 * (NULL: self-signed with key).
 */
static inline X509 *make_cert(const char *cn, const char *san, const char *from, const char *to,
                              bool is_ca, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey)
{
	static long serial = 1;
	X509 *x = X509_new();
	X509_NAME *name;

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	if (from != NULL)
		assert_int_equal(ASN1_TIME_set_string_X509(X509_getm_notBefore(x), from), 1);
	else
		X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	if (to != NULL)
		assert_int_equal(ASN1_TIME_set_string_X509(X509_getm_notAfter(x), to), 1);
	else
		X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	assert_int_equal(
	    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	if (is_ca) {
		add_ext(x, issuer != NULL ? issuer : x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, issuer != NULL ? issuer : x, NID_key_usage,
		        "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer != NULL ? issuer : x, NID_basic_constraints, "critical,CA:FALSE");
		add_ext(x, issuer != NULL ? issuer : x, NID_ext_key_usage, "serverAuth");
	}
	add_ext(x, issuer != NULL ? issuer : x, NID_subject_key_identifier, "hash");
	if (san != NULL)
		add_ext(x, issuer != NULL ? issuer : x, NID_subject_alt_name, san);
	assert_true(X509_sign(x, issuer != NULL ? ikey : key, EVP_sha256()) > 0);
	return x;
}

/* hs_step - one handshake step of ssl; false when it failed (not just waiting) */
static inline bool hs_step(SSL *ssl, int *done)
{
	int r = SSL_do_handshake(ssl);
	int e = SSL_get_error(ssl, r);

	if (r == 1)
		*done = 1;
	return r == 1 || e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

/* bio_handshake - client c and server s over a new BIO pair; 0 when both finish */
static inline int bio_handshake(SSL *c, SSL *s)
{
	BIO *sb = NULL, *cb = NULL;
	int sdone = 0, cdone = 0;

	assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	SSL_set_bio(s, sb, sb);
	SSL_set_bio(c, cb, cb);
	SSL_set_accept_state(s);
	SSL_set_connect_state(c);
	for (int i = 0; i < 50 && !(sdone && cdone); i++) {
		if (!cdone && !hs_step(c, &cdone))
			break;
		if (!sdone && !hs_step(s, &sdone))
			break;
	}
	ERR_clear_error();
	return sdone && cdone ? 0 : -1;
}

/* handshake - client c against a new server of sctx; 0 when both finish
 * (*sout: the server's SSL, else it is freed) */
static inline int handshake(SSL *c, SSL_CTX *sctx, SSL **sout)
{
	SSL *s = SSL_new(sctx);
	int rc;

	assert_non_null(s);
	rc = bio_handshake(c, s);
	if (sout != NULL)
		*sout = s;
	else
		SSL_free(s);
	return rc;
}

#endif
