/*
 * tls/tickets - session ticket keys, rotated; see tickets.h.
 *
 * Each key: a 16-byte name (sent in the ticket), an AES-256-CBC key and an
 * HMAC-SHA256 key, all random. The ring is shared by every inbound loop
 * (thread) using the SSL_CTX, so it is guarded by a mutex; the critical
 * section is a copy of 80 bytes.
 */
#include "tls/tickets.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/xmalloc.h"

struct tkey {
	unsigned char name[16];
	unsigned char aes[32];
	unsigned char hmac[32];
	bool valid;
};

struct ring {
	pthread_mutex_t mu;
	struct tkey cur, prev;
	time_t made;
	unsigned rotate;
};

static int ring_index = -1;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;

static void ring_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct ring *r = ptr;
	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (r == NULL)
		return;
	pthread_mutex_destroy(&r->mu);
	OPENSSL_cleanse(r, sizeof(*r));
	free(r);
}

static void ring_index_init(void)
{
	ring_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ring_free);
}

/* new_key - under the lock */
static int new_key(struct ring *r)
{
	struct tkey k = {.valid = true};
	if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.aes, sizeof(k.aes)) != 1 ||
	    RAND_bytes(k.hmac, sizeof(k.hmac)) != 1)
		return -1;
	r->prev = r->cur;
	r->cur = k;
	r->made = time(NULL);
	OPENSSL_cleanse(&k, sizeof(k));
	return 0;
}

static int set_keys(const struct tkey *k, const unsigned char *iv, EVP_CIPHER_CTX *cctx,
                    EVP_MAC_CTX *hctx, int enc)
{
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	    OSSL_PARAM_construct_end(),
	};
	if (EVP_MAC_CTX_set_params(hctx, params) != 1)
		return -1;
	if (enc)
		return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 ? 0 : -1;
	return EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) == 1 ? 0 : -1;
}

/* OpenSSL's ticket key callback: 1 use this key, 2 accept and renew, 0 no */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                     EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
	struct ring *r = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ring_index);
	if (r == NULL)
		return -1;
	struct tkey k;
	int rc = 0;
	pthread_mutex_lock(&r->mu);
	if (enc) {
		if (time(NULL) - r->made >= (time_t)r->rotate && new_key(r) < 0) {
			pthread_mutex_unlock(&r->mu);
			return -1;
		}
		k = r->cur;
		rc = 1;
	} else if (r->cur.valid && memcmp(key_name, r->cur.name, 16) == 0) {
		k = r->cur;
		/* TLS 1.3 tickets are used once (RFC 8446 C.4; OpenSSL clients never
		 * offer a used one again): a resumed session gets a fresh ticket, or
		 * its client's next connection is a full handshake. A TLS 1.2 ticket
		 * stays good until its key is replaced. */
		rc = SSL_version(ssl) >= TLS1_3_VERSION ? 2 : 1;
	} else if (r->prev.valid && memcmp(key_name, r->prev.name, 16) == 0) {
		k = r->prev;
		rc = 2; /* good, but issue a ticket under the current key */
	}
	pthread_mutex_unlock(&r->mu);
	if (rc == 0)
		return 0; /* unknown or expired key: a full handshake */
	if (enc) {
		memcpy(key_name, k.name, 16);
		if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
			rc = -1;
	}
	if (rc > 0 && set_keys(&k, iv, cctx, hctx, enc) < 0)
		rc = -1;
	OPENSSL_cleanse(&k, sizeof(k));
	return rc;
}

int tls_tickets_enable(SSL_CTX *ctx, unsigned rotate_secs, char *err, size_t errlen)
{
	pthread_once(&ring_once, ring_index_init);
	if (ring_index < 0) {
		snprintf(err, errlen, "session tickets: no ex_data index");
		return -1;
	}
	struct ring *r = xcalloc(1, sizeof(*r));
	pthread_mutex_init(&r->mu, NULL);
	r->rotate = rotate_secs ? rotate_secs : 1;
	if (new_key(r) < 0) {
		snprintf(err, errlen, "session tickets: RAND_bytes failed");
		ring_free(NULL, r, NULL, 0, 0, NULL);
		return -1;
	}
	if (SSL_CTX_set_ex_data(ctx, ring_index, r) != 1 ||
	    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) != 1) {
		snprintf(err, errlen, "session tickets: cannot install the key callback");
		ring_free(NULL, r, NULL, 0, 0, NULL);
		return -1;
	}
	/* a ticket outlives at most two keys; say so to the client too */
	SSL_CTX_set_timeout(ctx, (long)r->rotate * 2);
	return 0;
}

void tls_tickets_rotate(SSL_CTX *ctx)
{
	struct ring *r = ring_index >= 0 ? SSL_CTX_get_ex_data(ctx, ring_index) : NULL;
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	new_key(r);
	pthread_mutex_unlock(&r->mu);
}
