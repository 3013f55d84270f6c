/*
 * test_tls_server - the server SSL_CTX: self-signed generation and reload,
 * protocol/cipher policy, certificate pair errors, and in-memory handshakes
 * (BIO pair) showing what a client actually gets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/config.h"
#include "tls/server.h"
#include "tls/tickets.h"
#include "testcert.h"

#define HOST "mx.example.org"

static char tmpdir[] = "/tmp/test_tls_server.XXXXXX";
static char path_buf[8][512];

/* paths inside tmpdir, built once in setup */
#define P_SS_CRT  path_buf[0] /* data_dir/tls/selfsigned.crt */
#define P_SS_KEY  path_buf[1]
#define P_RSA_CRT path_buf[2]
#define P_RSA_KEY path_buf[3]
#define P_EC2_CRT path_buf[4]
#define P_EC2_KEY path_buf[5]
#define P_LOG     path_buf[6]

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void cfg_selfsigned(struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->hostname = HOST;
	c->data_dir = tmpdir;
}

/* capture what the log writes to stderr, to check the log lines */
static int saved_stderr = -1;

static void capture_start(void)
{
	int fd;

	fflush(stderr);
	saved_stderr = dup(2);
	fd = open(P_LOG, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	dup2(fd, 2);
	close(fd);
}

static char *capture_end(void)
{
	static char buf[16384];
	FILE *fp;
	size_t n;

	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	fp = fopen(P_LOG, "r");
	assert_non_null(fp);
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	buf[n] = '\0';
	fclose(fp);
	fputs(buf, stderr); /* keep it visible in the test output */
	return buf;
}

/* make_pair - a self-signed certificate for pkey, written as PEM files */
static void make_pair(EVP_PKEY *pkey, const char *cn, const char *crt, const char *key)
{
	X509 *x = X509_new();
	X509_NAME *name;
	FILE *fp;

	assert_non_null(pkey);
	assert_non_null(x);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, name);
	X509_set_pubkey(x, pkey);
	assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);

	fp = fopen(crt, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_X509(fp, x), 1);
	fclose(fp);
	fp = fopen(key, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
	X509_free(x);
}

static int group_setup(void **state)
{
	(void)state;
	if (mkdtemp(tmpdir) == NULL)
		return -1;
	snprintf(P_SS_CRT, sizeof(path_buf[0]), "%s/tls/selfsigned.crt", tmpdir);
	snprintf(P_SS_KEY, sizeof(path_buf[0]), "%s/tls/selfsigned.key", tmpdir);
	snprintf(P_RSA_CRT, sizeof(path_buf[0]), "%s/rsa.crt", tmpdir);
	snprintf(P_RSA_KEY, sizeof(path_buf[0]), "%s/rsa.key", tmpdir);
	snprintf(P_EC2_CRT, sizeof(path_buf[0]), "%s/ec2.crt", tmpdir);
	snprintf(P_EC2_KEY, sizeof(path_buf[0]), "%s/ec2.key", tmpdir);
	snprintf(P_LOG, sizeof(path_buf[0]), "%s/log.txt", tmpdir);

	EVP_PKEY *rsa = EVP_RSA_gen(2048);
	make_pair(rsa, HOST, P_RSA_CRT, P_RSA_KEY);
	EVP_PKEY_free(rsa);
	EVP_PKEY *ec = EVP_EC_gen("P-256");
	make_pair(ec, HOST, P_EC2_CRT, P_EC2_KEY);
	EVP_PKEY_free(ec);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* a session the next server_handshake() offers to resume, if set */
static SSL_SESSION *resume_with;

/* server_handshake - a client of cctx and a server of sctx over a BIO pair; 0 when
 * both finish */
static int server_handshake(SSL_CTX *sctx, SSL_CTX *cctx, SSL **sout, SSL **cout)
{
	SSL *s = SSL_new(sctx), *c = SSL_new(cctx);

	assert_non_null(s);
	assert_non_null(c);
	if (resume_with)
		SSL_set_session(c, resume_with);
	*sout = s;
	*cout = c;
	return bio_handshake(c, s);
}

static SSL_CTX *client_ctx(int min, int max, const char *ciphers)
{
	SSL_CTX *c = SSL_CTX_new(TLS_client_method());

	assert_non_null(c);
	if (ciphers != NULL) {
		/* old protocols need level 0 in OpenSSL 3: the client is the weak one */
		SSL_CTX_set_security_level(c, 0);
		assert_int_equal(SSL_CTX_set_cipher_list(c, ciphers), 1);
	}
	assert_int_equal(SSL_CTX_set_min_proto_version(c, min), 1);
	assert_int_equal(SSL_CTX_set_max_proto_version(c, max), 1);
	return c;
}

static void fingerprint_of(SSL_CTX *ctx, char *fp, size_t len)
{
	X509 *x = SSL_CTX_get0_certificate(ctx);

	assert_non_null(x);
	assert_int_equal(tls_cert_fingerprint(x, fp, len), 0);
}

static void test_selfsigned_generated_then_loaded(void **state)
{
	struct config c;
	char err[512] = "", fp1[128], fp2[128], want[200], dir[600];
	struct stat st;
	SSL_CTX *ctx;
	const char *log;

	(void)state;
	cfg_selfsigned(&c);
	capture_start();
	ctx = tls_server_ctx_new(&c, err, sizeof(err));
	log = capture_end();
	if (ctx == NULL)
		fail_msg("tls_server_ctx_new: %s", err);
	assert_non_null(strstr(log, "event=tls_selfsigned action=generated"));
	fingerprint_of(ctx, fp1, sizeof(fp1));
	assert_int_equal(strlen(fp1), 32 * 3 - 1);
	snprintf(want, sizeof(want), "sha256=%s", fp1);
	assert_non_null(strstr(log, want));

	/* the key is private from the moment it exists; its directory too */
	assert_int_equal(stat(P_SS_KEY, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	snprintf(dir, sizeof(dir), "%s/tls", tmpdir);
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);

	/* the certificate is what the contract says */
	X509 *x = SSL_CTX_get0_certificate(ctx);
	assert_int_equal(X509_get_version(x), X509_VERSION_3);
	assert_int_equal(X509_check_host(x, HOST, 0, 0, NULL), 1);
	assert_int_equal(X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0), 1);
	assert_int_equal(X509_check_ca(x), 0);
	assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(x)), EVP_PKEY_EC);
	time_t nine_years = time(NULL) + (time_t)9 * 365 * 86400;
	assert_true(X509_cmp_time(X509_get0_notAfter(x), &nine_years) > 0);
	assert_true(X509_cmp_current_time(X509_get0_notBefore(x)) < 0);
	assert_true(X509_get_signature_nid(x) == NID_ecdsa_with_SHA256);
	const ASN1_INTEGER *serial = X509_get0_serialNumber(x);
	assert_true(serial->length >= 15); /* 128 random bits */

	/* TLS 1.1 and older are refused by the default policy */
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
	assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
	SSL_CTX_free(ctx);

	/* second start: the same certificate is loaded, not a new one */
	capture_start();
	ctx = tls_server_ctx_new(&c, err, sizeof(err));
	log = capture_end();
	if (ctx == NULL)
		fail_msg("tls_server_ctx_new: %s", err);
	assert_non_null(strstr(log, "event=tls_selfsigned action=loaded"));
	fingerprint_of(ctx, fp2, sizeof(fp2));
	assert_string_equal(fp1, fp2);
	assert_non_null(strstr(log, want));
	SSL_CTX_free(ctx);
}

static void test_protocols(void **state)
{
	struct config c;
	char err[512] = "";
	SSL_CTX *ctx;

	(void)state;
	cfg_selfsigned(&c);
	c.tls_protocols = "TLSv1.3";
	ctx = tls_server_ctx_new(&c, err, sizeof(err));
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
	assert_int_equal(SSL_CTX_get_max_proto_version(ctx), TLS1_3_VERSION);
	SSL_CTX_free(ctx);

	c.tls_protocols = "TLSv1.2 TLSv1.3";
	ctx = tls_server_ctx_new(&c, err, sizeof(err));
	assert_non_null(ctx);
	assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
	SSL_CTX_free(ctx);

	c.tls_protocols = "TLSv1.1 TLSv1.2";
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "\"TLSv1.1\""));

	c.tls_protocols = "TLSv1.3 bogus";
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "\"bogus\""));
}

static void test_bad_algorithms(void **state)
{
	struct config c;
	char err[512] = "";

	(void)state;
	cfg_selfsigned(&c);
	c.tls_ciphers = "NO-SUCH-CIPHER";
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "ciphers"));

	cfg_selfsigned(&c);
	c.tls_groups = "X25519:no-such-group";
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "groups"));
}

static void test_missing_cert(void **state)
{
	struct config c;
	char err[512] = "", missing[600];

	(void)state;
	snprintf(missing, sizeof(missing), "%s/absent.crt", tmpdir);
	cfg_selfsigned(&c);
	c.tls_cert[0] = missing;
	c.tls_key[0] = P_EC2_KEY;
	c.n_cert = c.n_key = 1;
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, missing));
	assert_non_null(strstr(err, "No such file"));

	/* a cert without its key */
	c.tls_cert[0] = P_EC2_CRT;
	c.n_key = 0;
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "tls_key"));
}

static void test_mismatched_pair(void **state)
{
	struct config c;
	char err[512] = "", want[1400];

	(void)state;
	cfg_selfsigned(&c);
	c.n_cert = c.n_key = 1;
	c.tls_cert[0] = P_EC2_CRT;
	c.tls_key[0] = P_SS_KEY; /* another ECDSA key */
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	snprintf(want, sizeof(want), "tls_key %s: does not match tls_cert %s", P_SS_KEY, P_EC2_CRT);
	assert_string_equal(err, want);

	c.tls_key[0] = P_RSA_KEY; /* not even the same type */
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	snprintf(want, sizeof(want), "tls_key %s: does not match tls_cert %s", P_RSA_KEY,
	         P_EC2_CRT);
	assert_string_equal(err, want);
}

/* the key type of the certificate a TLS 1.2 client offering only suite gets */
static int served_key_type(SSL_CTX *sctx, const char *suite)
{
	SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION, suite);
	SSL *s, *cl;
	int type = -1;

	if (server_handshake(sctx, cctx, &s, &cl) == 0) {
		X509 *peer = SSL_get1_peer_certificate(cl);
		assert_non_null(peer);
		type = EVP_PKEY_get_base_id(X509_get0_pubkey(peer));
		X509_free(peer);
	}
	SSL_free(s);
	SSL_free(cl);
	SSL_CTX_free(cctx);
	return type;
}

static void test_ecdsa_and_rsa(void **state)
{
	struct config c;
	char err[512] = "";
	SSL_CTX *ctx;
	const char *log;

	(void)state;
	cfg_selfsigned(&c);
	c.n_cert = c.n_key = 2;
	c.tls_cert[0] = P_EC2_CRT;
	c.tls_key[0] = P_EC2_KEY;
	c.tls_cert[1] = P_RSA_CRT;
	c.tls_key[1] = P_RSA_KEY;
	capture_start();
	ctx = tls_server_ctx_new(&c, err, sizeof(err));
	log = capture_end();
	if (ctx == NULL)
		fail_msg("tls_server_ctx_new: %s", err);
	assert_non_null(strstr(log, "event=tls_cert"));
	assert_non_null(strstr(log, "type=ECDSA"));
	assert_non_null(strstr(log, "type=RSA"));
	assert_null(strstr(log, "tls_selfsigned"));

	/* both stay installed; each client gets the one it can use */
	assert_int_equal(served_key_type(ctx, "ECDHE-RSA-AES256-GCM-SHA384"), EVP_PKEY_RSA);
	assert_int_equal(served_key_type(ctx, "ECDHE-ECDSA-AES256-GCM-SHA384"), EVP_PKEY_EC);
	SSL_CTX_free(ctx);

	/* two of one type: the second would silently replace the first */
	c.tls_cert[1] = P_SS_CRT;
	c.tls_key[1] = P_SS_KEY;
	assert_null(tls_server_ctx_new(&c, err, sizeof(err)));
	assert_non_null(strstr(err, "second ECDSA"));
}

static void test_handshakes(void **state)
{
	struct config c;
	char err[512] = "", desc[256];
	SSL_CTX *sctx, *cctx;
	SSL *s, *cl;

	(void)state;
	cfg_selfsigned(&c);
	sctx = tls_server_ctx_new(&c, err, sizeof(err));
	if (sctx == NULL)
		fail_msg("tls_server_ctx_new: %s", err);

	/* TLS 1.2, static RSA key exchange, CBC: not in our list */
	cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION, "AES256-SHA");
	assert_int_equal(server_handshake(sctx, cctx, &s, &cl), -1);
	SSL_free(s);
	SSL_free(cl);
	SSL_CTX_free(cctx);

	/* TLS 1.1 (RFC 8996) */
	cctx = client_ctx(TLS1_1_VERSION, TLS1_1_VERSION, "ALL:@SECLEVEL=0");
	assert_int_equal(server_handshake(sctx, cctx, &s, &cl), -1);
	SSL_free(s);
	SSL_free(cl);
	SSL_CTX_free(cctx);

	/* TLS 1.3: server preference picks AES-256-GCM */
	cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
	assert_int_equal(server_handshake(sctx, cctx, &s, &cl), 0);
	tls_describe(s, desc, sizeof(desc));
	assert_string_equal(desc, "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)");
	SSL_free(s);
	SSL_free(cl);
	SSL_CTX_free(cctx);

	/* TLS 1.2 with a default client: ECDHE + AEAD */
	cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION, NULL);
	assert_int_equal(server_handshake(sctx, cctx, &s, &cl), 0);
	tls_describe(s, desc, sizeof(desc));
	assert_string_equal(desc,
	                    "TLSv1.2 with cipher ECDHE-ECDSA-AES256-GCM-SHA384 (256/256 bits)");
	assert_null(SSL_get_current_compression(s));
	SSL_free(s);
	SSL_free(cl);
	SSL_CTX_free(cctx);

	SSL_CTX_free(sctx);
}

/* ticket_server - a server context on the self-signed pair */
static SSL_CTX *ticket_server(void)
{
	struct config c;
	char err[512] = "";

	cfg_selfsigned(&c);
	SSL_CTX *sctx = tls_server_ctx_new(&c, err, sizeof(err));
	if (sctx == NULL)
		fail_msg("tls_server_ctx_new: %s", err);
	return sctx;
}

/* resume - a handshake offering sess; returns whether it resumed */
static int resume(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *sess, SSL_SESSION **next)
{
	SSL *s, *cl;
	unsigned char buf[16];
	resume_with = sess;
	assert_int_equal(server_handshake(sctx, cctx, &s, &cl), 0);
	resume_with = NULL;
	int reused = SSL_session_reused(cl);
	/* TLS 1.3 tickets follow the handshake: reading takes them in */
	assert_true(SSL_read(cl, buf, sizeof(buf)) <= 0);
	if (next)
		*next = SSL_get1_session(cl);
	/* a clean close: a session freed without one is made non-resumable */
	SSL_set_shutdown(cl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(s);
	SSL_free(cl);
	return reused;
}

/* session tickets resume under the current and the previous key, not older */
static void test_ticket_rotation(void **state)
{
	SSL_SESSION *first, *second, *tmp;

	(void)state;
	SSL_CTX *sctx = ticket_server();
	SSL_CTX *cctx = client_ctx(TLS1_2_VERSION, TLS1_2_VERSION, NULL);
	/* tickets only: no server-side session cache to fall back on */
	SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);

	assert_int_equal(resume(sctx, cctx, NULL, &first), 0);
	assert_true(SSL_SESSION_has_ticket(first));
	assert_int_equal(resume(sctx, cctx, first, NULL), 1);

	tls_tickets_rotate(sctx); /* first's key is now the previous one */
	assert_int_equal(resume(sctx, cctx, first, &second), 1);
	tls_tickets_rotate(sctx); /* first's key is gone; second's is previous */
	assert_int_equal(resume(sctx, cctx, first, &tmp), 0);
	SSL_SESSION_free(tmp);
	/* second was renewed under the key current after the first rotation */
	assert_int_equal(resume(sctx, cctx, second, NULL), 1);

	SSL_SESSION_free(first);
	SSL_SESSION_free(second);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

/* TLS 1.3: the newest ticket a client received, and how many came */
static SSL_SESSION *tls13_newest;
static int tls13_tickets;

static int tls13_new_session(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	SSL_SESSION_free(tls13_newest);
	tls13_newest = sess;
	tls13_tickets++;
	return 1;
}

/* TLS 1.3 tickets are used once: every connection that resumes must bring
 * the ticket for the next one, one ticket per handshake, so a client that
 * keeps the newest session resumes every time, not every other time */
static void test_ticket_tls13_chain(void **state)
{
	(void)state;
	SSL_CTX *sctx = ticket_server();
	SSL_CTX *cctx = client_ctx(TLS1_3_VERSION, TLS1_3_VERSION, NULL);
	SSL_CTX_set_session_cache_mode(cctx,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(cctx, tls13_new_session);

	for (int i = 0; i < 5; i++) {
		/* the last one after a key rotation: still resumes (previous key) */
		if (i == 4)
			tls_tickets_rotate(sctx);
		SSL_SESSION *offer = tls13_newest;
		tls13_newest = NULL;
		tls13_tickets = 0;
		assert_int_equal(resume(sctx, cctx, offer, NULL), i > 0);
		assert_int_equal(tls13_tickets, 1);
		assert_non_null(tls13_newest);
		assert_true(SSL_SESSION_is_resumable(tls13_newest));
		if (offer != NULL)
			assert_ptr_not_equal(offer, tls13_newest);
		SSL_SESSION_free(offer);
	}
	SSL_SESSION_free(tls13_newest);
	tls13_newest = NULL;
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void test_fingerprint_buffer(void **state)
{
	char small[10];
	X509 *x;
	FILE *fp;

	(void)state;
	fp = fopen(P_EC2_CRT, "r");
	assert_non_null(fp);
	x = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	assert_non_null(x);
	assert_int_equal(tls_cert_fingerprint(x, small, sizeof(small)), -1);
	assert_int_equal(tls_cert_fingerprint(NULL, small, sizeof(small)), -1);
	X509_free(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    /* first: it creates the self-signed pair the others use */
	    cmocka_unit_test(test_selfsigned_generated_then_loaded),
	    cmocka_unit_test(test_protocols),
	    cmocka_unit_test(test_bad_algorithms),
	    cmocka_unit_test(test_missing_cert),
	    cmocka_unit_test(test_mismatched_pair),
	    cmocka_unit_test(test_ecdsa_and_rsa),
	    cmocka_unit_test(test_handshakes),
	    cmocka_unit_test(test_fingerprint_buffer),
	    cmocka_unit_test(test_ticket_rotation),
	    cmocka_unit_test(test_ticket_tls13_chain),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
