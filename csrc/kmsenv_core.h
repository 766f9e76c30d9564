/*
 * kmsenv_core.h: the whole C surface of kmsenv's native core.
 *
 * This file is both the C header and the cffi cdef: build_native.py feeds the
 * text between the CDEF-BEGIN and CDEF-END markers to ffibuilder.cdef(), so the
 * two cannot drift apart. Keep that region free of preprocessor logic other
 * than plain "#define NAME <integer>" lines.
 *
 * Rules every function follows:
 *  - returns KMSENV_OK (0) or a negative KMSENV_E_* status; never prints,
 *    never aborts, never leaves OpenSSL's error queue non-empty;
 *  - checks every length before touching memory; sizes are size_t and the
 *    core chunks internally where OpenSSL takes int;
 *  - a failed open (tag mismatch) wipes the output buffer it was given, so
 *    unverified plaintext never reaches the caller;
 *  - every copy of key material is wiped with OPENSSL_cleanse before release.
 *
 * Threading: cffi releases the GIL around every call. One kmsenv_key must not
 * be used by two threads at once (the Python layer guarantees this); distinct
 * keys are independent. Input buffers must not change during a call.
 */
#ifndef KMSENV_CORE_H
#define KMSENV_CORE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define KMSENV_OK 0
#define KMSENV_E_ARG -1
#define KMSENV_E_AUTH -2
#define KMSENV_E_CRYPTO -3
#define KMSENV_E_NOMEM -4
#define KMSENV_E_UNSUPPORTED -5
#define KMSENV_E_PADDING -6
#define KMSENV_E_FORMAT -7

#define KMSENV_CIPHER_AES 1
#define KMSENV_CIPHER_SM4 2

#define KMSENV_MODE_CBC 1
#define KMSENV_MODE_CBC_PKCS7 2
#define KMSENV_MODE_CTR 3

#define KMSENV_FEATURE_SM4 1
#define KMSENV_FEATURE_AESNI 2
#define KMSENV_FEATURE_SM4_GFNI 4
#define KMSENV_FEATURE_AES_VAES 8

#define KMSENV_GCM_IV_LEN 12
#define KMSENV_GCM_TAG_LEN 16
#define KMSENV_BLOCK_IV_LEN 16

typedef struct kmsenv_key kmsenv_key;

/* Package version compiled in (from -DKMSENV_VERSION="..."), for the stale-build check. */
const char *kmsenv_version(void);
/* OpenSSL version string of the libcrypto actually loaded at run time. */
const char *kmsenv_openssl_version(void);
/* OPENSSL_VERSION_TEXT of the headers the core was compiled against. */
const char *kmsenv_openssl_build_version(void);
/* Bit set of KMSENV_FEATURE_* detected at run time. */
uint32_t kmsenv_features(void);
/* Fixed text for a status; never contains data. */
const char *kmsenv_strerror(int status);

/* OPENSSL_cleanse. */
void kmsenv_wipe(void *p, size_t n);
/* CRYPTO_memcmp: 0 when equal, constant time in n. */
int kmsenv_memeq(const void *a, const void *b, size_t n);
/* n bytes from the OpenSSL CSPRNG (RAND_bytes), for bulk IVs. */
int kmsenv_random(uint8_t *out, size_t n);

/* A data key with its key schedule prepared once. cipher: KMSENV_CIPHER_AES
 * (keylen 16 or 32) or KMSENV_CIPHER_SM4 (keylen 16). The key bytes are copied;
 * the caller may wipe its copy right after. */
int kmsenv_key_new(int cipher, const uint8_t *key, size_t keylen, kmsenv_key **out);
/* Wipes and frees; NULL is accepted. */
void kmsenv_key_free(kmsenv_key *k);

/* GCM with a 12-byte IV and a 16-byte tag kept apart from the ciphertext.
 * out has room for inlen bytes (in == out is allowed). aad/in may be NULL when
 * their length is 0. With inlen == 0 this is the GMAC used for the header tag. */
int kmsenv_gcm_seal(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t inlen, uint8_t *out, uint8_t *tag);
/* Verifies the tag in constant time; on KMSENV_E_AUTH, out[0..inlen) is wiped. */
int kmsenv_gcm_open(kmsenv_key *k, const uint8_t *iv, const uint8_t *aad, size_t aadlen,
                    const uint8_t *in, size_t inlen, const uint8_t *tag, uint8_t *out);

/* Legacy unauthenticated modes (algorithm IDs 3-8, 10-12), 16-byte IV.
 * KMSENV_MODE_CTR: the IV is the full 128-bit big-endian counter block.
 * KMSENV_MODE_CBC: inlen must be a multiple of 16 (else KMSENV_E_ARG).
 * KMSENV_MODE_CBC_PKCS7: encrypt pads (out needs inlen - inlen % 16 + 16
 * bytes); decrypt checks and strips the padding (KMSENV_E_PADDING, out wiped).
 * *outlen receives the bytes written. */
int kmsenv_legacy_encrypt(kmsenv_key *k, int mode, const uint8_t *iv,
                          const uint8_t *in, size_t inlen, uint8_t *out, size_t outcap,
                          size_t *outlen);
int kmsenv_legacy_decrypt(kmsenv_key *k, int mode, const uint8_t *iv,
                          const uint8_t *in, size_t inlen, uint8_t *out, size_t outcap,
                          size_t *outlen);

/* Size in bytes of one complete DER message (see below) for a header of
 * headerlen bytes and a GCM body of ptlen bytes. */
size_t kmsenv_message_size(size_t headerlen, size_t ptlen);

/* Batch seal: n plaintexts -> n complete standalone DER messages that share one
 * already-encoded header (the Header SEQUENCE, TLV included, header tag
 * computed by the caller). Message i, written at out + out_offsets[i]:
 *   30 L { header[0..headerlen) , 30 L { 04 0c iv_i , 04 L ct_i , 04 10 tag_i } }
 * Plaintext i is in[in_offsets[i] .. in_offsets[i+1]) (n+1 offsets, offsets[0]
 * is where the first one starts, non-decreasing). ivs: n*12 bytes, or NULL to
 * draw them inside with one RAND_bytes call. AAD (the context bytes) is the same
 * for every message. out_offsets receives n+1 entries; out_offsets[n] is the
 * total written. outcap must be >= sum of kmsenv_message_size() (else E_ARG,
 * nothing written). */
int kmsenv_gcm_seal_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                             const uint8_t *aad, size_t aadlen, size_t n,
                             const uint8_t *in, const size_t *in_offsets,
                             const uint8_t *ivs, uint8_t *out, size_t outcap,
                             size_t *out_offsets);

/* Batch open of n complete DER messages in[in_offsets[i] .. in_offsets[i+1])
 * whose Header TLV must equal header[0..headerlen) byte for byte (so the
 * caller verifies the header tag once for all). Strict DER: minimal definite
 * lengths, nothing trailing, IV exactly 12 bytes, tag exactly 16.
 * status[i] = KMSENV_OK, KMSENV_E_FORMAT (malformed, or another header), or
 * KMSENV_E_AUTH (body tag). Plaintext i goes to out + out_offsets[i] (n+1
 * entries); a failed message gets zero length and nothing of it stays in out.
 * Returns KMSENV_OK when every status is OK, else the first failing status.
 * outcap must be >= in_offsets[n] - in_offsets[0]. */
int kmsenv_gcm_open_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                             const uint8_t *aad, size_t aadlen, size_t n,
                             const uint8_t *in, const size_t *in_offsets,
                             uint8_t *out, size_t outcap, size_t *out_offsets,
                             int *status);
/* CDEF-END */

#endif
