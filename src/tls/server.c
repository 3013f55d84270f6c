/*
 * tls/server - the server-side SSL_CTX: protocol and cipher policy,
 * certificate loading, and the self-signed fallback certificate.
 *
 * The defaults follow the Applied Crypto Hardening (bettercrypto.org) server
 * lists: TLS 1.2 and 1.3 only, forward-secret AEAD suites only. Opportunistic
 * SMTP clients that cannot meet that fall back to plaintext on other MTAs;
 * strictmx refuses plaintext, so such a client cannot deliver here at all -
 * that is the point of the project.
 *
 * See server.h for the contract.
 */
#include "tls/server.h"
#include "tls/tickets.h"

#include "tls/policy.h"

#include "common/config.h"
#include "common/log.h"
#include "common/xmalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* "AA:BB:..." for a SHA-256 digest, with the terminating NUL */
#define FINGERPRINT_LEN (SHA256_DIGEST_LENGTH * 3)

/* self-signed validity: RFC 5280 §4.1.2.5; one hour back for clock skew */
#define SELFSIGNED_DAYS       3652
#define SELFSIGNED_BACKDATE_S 3600
#define TICKET_ROTATE_SECS    3600 /* a ticket key is used for an hour, accepted for two */

static bool is_set(const char *s)
{
	return s != NULL && *s != '\0';
}

/*
 * ossl_reason - the reason of the most recent OpenSSL error (the innermost
 * one is usually the useful one: "ee key too small", "no cipher match"),
 * and clear the queue so later calls start clean.
 */
static const char *ossl_reason(void)
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

int tls_cert_fingerprint(X509 *x, char *buf, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (len == 0)
		return -1;
	buf[0] = '\0';
	if (x == NULL || !X509_digest(x, EVP_sha256(), md, &mdlen) || mdlen == 0)
		return -1;
	if (len < (size_t)mdlen * 3)
		return -1;
	for (size_t i = 0; i < mdlen; i++) {
		buf[i * 3] = hex[md[i] >> 4];
		buf[i * 3 + 1] = hex[md[i] & 15];
		buf[i * 3 + 2] = i + 1 < mdlen ? ':' : '\0';
	}
	return 0;
}

void tls_describe(const SSL *ssl, char *buf, size_t len)
{
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	int alg_bits = 0, bits;

	if (len == 0)
		return;
	if (cipher == NULL) {
		snprintf(buf, len, "%s without cipher", SSL_get_version(ssl));
		return;
	}
	/* Postfix's Received: wording: "TLSv1.3 with cipher X (256/256 bits)" */
	bits = SSL_CIPHER_get_bits(cipher, &alg_bits);
	snprintf(buf, len, "%s with cipher %s (%d/%d bits)", SSL_get_version(ssl),
	         SSL_CIPHER_get_name(cipher), bits, alg_bits);
}

/* no_passphrase - never prompt on a terminal for an encrypted key */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static const char *key_type(const EVP_PKEY *pkey)
{
	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_EC:
		return "ECDSA";
	case EVP_PKEY_RSA:
		return "RSA";
	case EVP_PKEY_ED25519:
		return "Ed25519";
	case EVP_PKEY_ED448:
		return "Ed448";
	default:
		return "other";
	}
}

/*
 * load_pair - install one certificate chain and its key. The files are read
 * once here first so that errors can say which file is wrong and how; the
 * chain itself is then installed by OpenSSL, which keeps one certificate per
 * key type (an ECDSA and an RSA pair coexist and the right one is chosen for
 * each client's signature algorithms).
 *
 * keyname/certname are the config key names used in error messages. On
 * success *leaf is the (owned) leaf certificate.
 */
static int load_pair(SSL_CTX *ctx, const char *certname, const char *cert, const char *keyname,
                     const char *key, const char **types_seen, size_t *n_types, X509 **leaf,
                     const char **type, char *err, size_t errlen)
{
	FILE *fp;
	X509 *x = NULL;
	EVP_PKEY *pkey = NULL;
	int rc = -1;

	fp = fopen(cert, "re");
	if (fp == NULL) {
		snprintf(err, errlen, "%s %s: %s", certname, cert, strerror(errno));
		goto out;
	}
	x = PEM_read_X509(fp, NULL, no_passphrase, NULL);
	fclose(fp);
	if (x == NULL) {
		ERR_clear_error();
		snprintf(err, errlen, "%s %s: not a PEM certificate", certname, cert);
		goto out;
	}
	fp = fopen(key, "re");
	if (fp == NULL) {
		snprintf(err, errlen, "%s %s: %s", keyname, key, strerror(errno));
		goto out;
	}
	pkey = PEM_read_PrivateKey(fp, NULL, no_passphrase, NULL);
	fclose(fp);
	if (pkey == NULL) {
		/* OpenSSL's decoder reason ("unsupported") would only mislead */
		ERR_clear_error();
		snprintf(err, errlen, "%s %s: not an unencrypted PEM private key", keyname, key);
		goto out;
	}
	if (X509_check_private_key(x, pkey) != 1) {
		ERR_clear_error();
		snprintf(err, errlen, "%s %s: does not match %s %s", keyname, key, certname, cert);
		goto out;
	}
	*type = key_type(pkey);
	/* a second pair of the same type would silently replace the first */
	for (size_t i = 0; i < *n_types; i++) {
		if (strcmp(types_seen[i], *type) == 0) {
			snprintf(err, errlen, "%s %s: a second %s certificate (one per key type)",
			         certname, cert, *type);
			goto out;
		}
	}
	if (!SSL_CTX_use_certificate_chain_file(ctx, cert)) {
		snprintf(err, errlen, "%s %s: %s", certname, cert, ossl_reason());
		goto out;
	}
	if (!SSL_CTX_use_PrivateKey(ctx, pkey)) {
		snprintf(err, errlen, "%s %s: %s", keyname, key, ossl_reason());
		goto out;
	}
	if (!SSL_CTX_check_private_key(ctx)) {
		ERR_clear_error();
		snprintf(err, errlen, "%s %s: does not match %s %s", keyname, key, certname, cert);
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		char esc[512];
		log_warn("event=tls_cert_expired cert=%s",
		         log_escape(cert, strlen(cert), esc, sizeof(esc)));
	}
	types_seen[(*n_types)++] = *type;
	*leaf = x;
	x = NULL;
	rc = 0;
out:
	X509_free(x);
	EVP_PKEY_free(pkey);
	return rc;
}

/* fsync_dir - make a rename or create in dir durable (fsync(2) man page) */
static int fsync_dir(const char *dir, char *err, size_t errlen)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		snprintf(err, errlen, "open %s: %s", dir, strerror(errno));
		return -1;
	}
	if (fsync(fd) < 0) {
		snprintf(err, errlen, "fsync %s: %s", dir, strerror(errno));
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/*
 * write_pem - write obj to tmp (created exclusively with mode), fsync, rename
 * to path. The key is never readable by anyone else, not even for a moment:
 * the mode is set by open(), not chmod() afterwards.
 */
static int write_pem(const char *tmp, const char *path, mode_t mode, X509 *x, EVP_PKEY *pkey,
                     char *err, size_t errlen)
{
	FILE *fp;
	int fd, ok;

	if (unlink(tmp) < 0 && errno != ENOENT) {
		snprintf(err, errlen, "unlink %s: %s", tmp, strerror(errno));
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0) {
		snprintf(err, errlen, "open %s: %s", tmp, strerror(errno));
		return -1;
	}
	fp = fdopen(fd, "w");
	if (fp == NULL) {
		snprintf(err, errlen, "fdopen %s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		return -1;
	}
	if (pkey != NULL)
		ok = PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL);
	else
		ok = PEM_write_X509(fp, x);
	if (!ok) {
		snprintf(err, errlen, "write %s: %s", tmp, ossl_reason());
		goto fail;
	}
	if (fflush(fp) != 0) {
		snprintf(err, errlen, "write %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (fsync(fd) < 0) {
		snprintf(err, errlen, "fsync %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (fclose(fp) != 0) {
		snprintf(err, errlen, "close %s: %s", tmp, strerror(errno));
		unlink(tmp);
		return -1;
	}
	if (rename(tmp, path) < 0) {
		snprintf(err, errlen, "rename %s %s: %s", tmp, path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
fail:
	fclose(fp);
	unlink(tmp);
	return -1;
}

/* hostname_ok - letters, digits, '-' and '.': safe in a SAN config string */
static bool hostname_ok(const char *h)
{
	size_t n = strlen(h);

	if (n == 0 || n > 253)
		return false;
	for (const char *p = h; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
			return false;
	}
	return true;
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
	int ok;

	if (ext == NULL)
		return 0;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

/*
 * make_selfsigned - ECDSA P-256 key and a self-signed X.509 v3 server
 * certificate for hostname (RFC 5280 profile: positive random serial of 128
 * bits, §4.1.2.2; SAN dNSName, which RFC 9525 §6.3 makes the only identity
 * that counts; CN too for old clients when it fits ub-common-name = 64).
 */
static int make_selfsigned(const char *hostname, X509 **xout, EVP_PKEY **kout, char *err,
                           size_t errlen)
{
	unsigned char rnd[16];
	EVP_PKEY *pkey = NULL;
	X509 *x = NULL;
	X509_NAME *name;
	BIGNUM *bn = NULL;
	X509V3_CTX v3;
	char *san = NULL;

	pkey = EVP_EC_gen("P-256");
	if (pkey == NULL) {
		snprintf(err, errlen, "self-signed certificate: key generation: %s", ossl_reason());
		goto fail;
	}
	x = X509_new();
	if (x == NULL || !X509_set_version(x, X509_VERSION_3))
		goto ossl_fail;
	if (RAND_bytes(rnd, sizeof(rnd)) != 1)
		goto ossl_fail;
	bn = BN_bin2bn(rnd, sizeof(rnd), NULL);
	/* RFC 5280 §4.1.2.2: positive (BN is unsigned), so only zero is out */
	if (bn != NULL && BN_is_zero(bn) && !BN_one(bn))
		goto ossl_fail;
	if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
		goto ossl_fail;
	if (X509_gmtime_adj(X509_getm_notBefore(x), -SELFSIGNED_BACKDATE_S) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), SELFSIGNED_DAYS, 0, NULL) == NULL)
		goto ossl_fail;
	name = X509_get_subject_name(x);
	if (strlen(hostname) <= 64 &&
	    !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hostname,
	                                -1, -1, 0))
		goto ossl_fail;
	if (!X509_set_issuer_name(x, name) || !X509_set_pubkey(x, pkey))
		goto ossl_fail;

	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	san = xasprintf("DNS:%s", hostname);
	if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE") ||
	    !add_ext(x, &v3, NID_key_usage, "critical,digitalSignature") ||
	    !add_ext(x, &v3, NID_ext_key_usage, "serverAuth") ||
	    !add_ext(x, &v3, NID_subject_alt_name, san) ||
	    !add_ext(x, &v3, NID_subject_key_identifier, "hash"))
		goto ossl_fail;
	if (X509_sign(x, pkey, EVP_sha256()) == 0)
		goto ossl_fail;

	free(san);
	BN_free(bn);
	*xout = x;
	*kout = pkey;
	return 0;
ossl_fail:
	snprintf(err, errlen, "self-signed certificate for %s: %s", hostname, ossl_reason());
fail:
	free(san);
	BN_free(bn);
	X509_free(x);
	EVP_PKEY_free(pkey);
	return -1;
}

static bool file_exists(const char *path, int *saved_errno)
{
	struct stat st;

	*saved_errno = 0;
	if (stat(path, &st) == 0)
		return true;
	if (errno != ENOENT)
		*saved_errno = errno;
	return false;
}

/*
 * load_selfsigned - data_dir/tls/selfsigned.{crt,key}: load, or create first.
 * Creation order (key, then cert, each tmp+fsync+rename, then the directory
 * fsync) means a crash leaves either both old files, or a new key without a
 * matching cert - which a restart sees as "missing" and regenerates.
 */
static int load_selfsigned(SSL_CTX *ctx, const struct config *c, char *err, size_t errlen)
{
	char *dir = NULL, *crt = NULL, *key = NULL, *crt_tmp = NULL, *key_tmp = NULL;
	const char *types[1], *type = NULL;
	size_t n_types = 0;
	X509 *x = NULL, *leaf = NULL;
	EVP_PKEY *pkey = NULL;
	char fp[FINGERPRINT_LEN], esc[512];
	const char *action = "loaded";
	int rc = -1, e1, e2;
	bool have_crt, have_key;

	if (!is_set(c->data_dir)) {
		snprintf(err, errlen,
		         "no tls_cert configured and no data_dir for a self-signed one");
		return -1;
	}
	if (!is_set(c->hostname) || !hostname_ok(c->hostname)) {
		snprintf(err, errlen, "self-signed certificate: unusable hostname \"%s\"",
		         c->hostname != NULL ? c->hostname : "");
		return -1;
	}
	dir = xasprintf("%s/tls", c->data_dir);
	crt = xasprintf("%s/selfsigned.crt", dir);
	key = xasprintf("%s/selfsigned.key", dir);
	crt_tmp = xasprintf("%s.tmp", crt);
	key_tmp = xasprintf("%s.tmp", key);

	if (mkdir(dir, 0700) == 0) {
		if (fsync_dir(c->data_dir, err, errlen) < 0)
			goto out;
	} else if (errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
		goto out;
	}
	have_crt = file_exists(crt, &e1);
	have_key = file_exists(key, &e2);
	if (e1 != 0 || e2 != 0) {
		snprintf(err, errlen, "stat %s: %s", e1 != 0 ? crt : key, strerror(e1 ? e1 : e2));
		goto out;
	}
	if (!have_crt || !have_key) {
		if (have_crt || have_key)
			log_warn("event=tls_selfsigned action=regenerate reason=\"%s missing\"",
			         have_crt ? "key" : "cert");
		if (make_selfsigned(c->hostname, &x, &pkey, err, errlen) < 0)
			goto out;
		if (write_pem(key_tmp, key, 0600, NULL, pkey, err, errlen) < 0 ||
		    write_pem(crt_tmp, crt, 0644, x, NULL, err, errlen) < 0 ||
		    fsync_dir(dir, err, errlen) < 0)
			goto out;
		action = "generated";
	}
	if (load_pair(ctx, "tls_cert", crt, "tls_key", key, types, &n_types, &leaf, &type, err,
	              errlen) < 0)
		goto out;
	if (tls_cert_fingerprint(leaf, fp, sizeof(fp)) < 0) {
		snprintf(err, errlen, "%s: cannot compute fingerprint", crt);
		goto out;
	}
	log_info("event=tls_selfsigned action=%s cert=%s sha256=%s", action,
	         log_escape(crt, strlen(crt), esc, sizeof(esc)), fp);
	/* kept across a hostname change: clients of a self-signed cert pin it */
	if (X509_check_host(leaf, c->hostname, 0, 0, NULL) != 1)
		log_warn("event=tls_selfsigned_name_mismatch cert=%s hostname=%s", esc,
		         c->hostname);
	rc = 0;
out:
	X509_free(x);
	X509_free(leaf);
	EVP_PKEY_free(pkey);
	free(dir);
	free(crt);
	free(key);
	free(crt_tmp);
	free(key_tmp);
	return rc;
}

static int load_configured(SSL_CTX *ctx, const struct config *c, char *err, size_t errlen)
{
	const char *types[CONFIG_MAX_CERTS];
	size_t n_types = 0;

	if (c->n_cert != c->n_key) {
		snprintf(err, errlen,
		         "%zu tls_cert but %zu tls_key: each certificate needs its key", c->n_cert,
		         c->n_key);
		return -1;
	}
	if (c->n_cert > CONFIG_MAX_CERTS) {
		snprintf(err, errlen, "more than %d tls_cert", CONFIG_MAX_CERTS);
		return -1;
	}
	for (size_t i = 0; i < c->n_cert; i++) {
		X509 *leaf = NULL;
		const char *type = NULL;
		char fp[FINGERPRINT_LEN], esc[512];

		if (!is_set(c->tls_cert[i]) || !is_set(c->tls_key[i])) {
			snprintf(err, errlen, "tls_cert/tls_key #%zu: empty path", i + 1);
			return -1;
		}
		if (load_pair(ctx, "tls_cert", c->tls_cert[i], "tls_key", c->tls_key[i], types,
		              &n_types, &leaf, &type, err, errlen) < 0)
			return -1;
		if (tls_cert_fingerprint(leaf, fp, sizeof(fp)) < 0)
			snprintf(fp, sizeof(fp), "unknown");
		log_info("event=tls_cert cert=%s type=%s sha256=%s",
		         log_escape(c->tls_cert[i], strlen(c->tls_cert[i]), esc, sizeof(esc)), type,
		         fp);
		X509_free(leaf);
	}
	return 0;
}

SSL_CTX *tls_server_ctx_new(const struct config *c, char *err, size_t errlen)
{
	static const unsigned char sid_ctx[] = "strictmx";
	SSL_CTX *ctx;
	uint64_t opts;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		snprintf(err, errlen, "SSL_CTX_new: %s", ossl_reason());
		return NULL;
	}
	/* security level 2 also makes a weak configured certificate fail at start */
	if (tls_policy_apply(ctx, "tls", c->tls_protocols, c->tls_ciphers, c->tls_ciphersuites,
	                     c->tls_groups, err, errlen) < 0)
		goto fail;

	/*
	 * Server preference: our list is ordered strongest first. Compression:
	 * CRIME. Renegotiation: not needed by SMTP and a DoS lever.
	 * IGNORE_UNEXPECTED_EOF: SMTP frames itself (QUIT / end of data), so a
	 * missing close_notify is no truncation attack - Postfix sets it too,
	 * and libevent 2.1.12 needs it to report EOF (c-anchors B.3).
	 */
	opts = SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	       SSL_OP_IGNORE_UNEXPECTED_EOF;
#ifdef SSL_OP_NO_CLIENT_RENEGOTIATION
	opts |= SSL_OP_NO_CLIENT_RENEGOTIATION;
#endif
	SSL_CTX_set_options(ctx, opts);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* no client certificates: SMTP clients are authenticated by nothing here */
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	/* session resumption (IDs and tickets) needs a context id */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	/* resumption by tickets only (stateless): no session cache shared, and
	 * locked, by the inbound loops, none flushed by a scan of every entry */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* tickets under keys that are replaced hourly (tls/tickets.h) */
	if (tls_tickets_enable(ctx, TICKET_ROTATE_SECS, err, errlen) < 0)
		goto fail;
	/* one TLS 1.3 ticket per handshake, not OpenSSL's two (meant for a
	 * browser's parallel connections): a sending MTA keeps one session per
	 * destination, and every resumption brings the next ticket */
	SSL_CTX_set_num_tickets(ctx, 1);

	if (c->n_cert > 0 || c->n_key > 0) {
		if (load_configured(ctx, c, err, errlen) < 0)
			goto fail;
	} else if (load_selfsigned(ctx, c, err, errlen) < 0) {
		goto fail;
	}
	ERR_clear_error();
	return ctx;
fail:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}
