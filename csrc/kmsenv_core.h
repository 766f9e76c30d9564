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
 *  - every copy of key material is wiped (kmsenv_wipe) before release.
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
#define KMSENV_FEATURE_SM4_AVX2 16
#define KMSENV_FEATURE_AES_VAES512 32
#define KMSENV_FEATURE_SM4_GFNI256 64

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
/* The kernel each family uses in this process (chosen once, see kernels.c):
 * its name ("evp" = OpenSSL), why it was chosen (calibration figures, a
 * forcing variable), and "" or the text of a warning (a kernel that failed
 * its self-test, a forced name this CPU cannot run). */
#define KMSENV_KERNEL_AES_GCM 0
#define KMSENV_KERNEL_SM4 1
const char *kmsenv_kernel_name(int family);
const char *kmsenv_kernel_reason(int family);
const char *kmsenv_kernel_warning(int family);
/* Fixed text for a status; never contains data. */
const char *kmsenv_strerror(int status);

/* Zeroes n bytes in a way the compiler cannot drop (core.c); NULL or 0 is a no-op. */
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
/* ---- Framed streams (frames.c) ----
 * One frame on the wire (all integers big-endian):
 *   regular: u32 seq || ct[frame_size] || tag[16]
 *   final:   u32 0xFFFFFFFF || u32 seq || u32 len || ct[len] || tag[16], 0 <= len < frame_size
 * seq runs from 1 to KMSENV_FRAME_MAX_SEQ. Frame seq is sealed with
 *   IV  = base_iv with its last 4 bytes XORed with u32(seq)
 *   AAD = msgid[32] || u32(seq) || u8(final ? 1 : 0)
 * The key is passed raw: every worker thread builds its own key schedule from
 * it, so no kmsenv_key is ever shared between threads. nthreads <= 0 means 1;
 * at most KMSENV_FRAMES_MAX_THREADS are used, fewer for small batches. Each
 * thread claims the next frame when it is free (a thread on a busier core
 * does fewer), and a failure names the lowest failing frame whichever thread
 * met it. */
#define KMSENV_FRAME_MSGID_LEN 32
#define KMSENV_FRAME_MIN_SIZE 1024
#define KMSENV_FRAME_MAX_SIZE 16777216
#define KMSENV_FRAME_MAX_SEQ 4294967294
#define KMSENV_FRAME_REGULAR_OVERHEAD 20
#define KMSENV_FRAME_FINAL_OVERHEAD 28
#define KMSENV_FRAMES_MAX_THREADS 64

/* Wire size of the frames kmsenv_frames_seal makes from inlen bytes, or 0 when
 * the arguments are invalid (frame_size out of range, or inlen not a multiple
 * of frame_size without a final frame). */
size_t kmsenv_frames_sealed_size(size_t frame_size, size_t inlen, int last_is_final);

/* Seals in[0..inlen) as consecutive frames numbered from first_seq: without
 * last_is_final inlen must be a multiple of frame_size (all frames regular);
 * with it, floor(inlen / frame_size) regular frames are followed by one final
 * frame holding the inlen % frame_size remaining bytes (possibly none).
 * outcap >= kmsenv_frames_sealed_size(); *outlen receives the bytes written.
 * On failure nothing of out is left. */
int kmsenv_frames_seal(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                       const uint8_t *msgid, uint32_t first_seq, size_t frame_size,
                       int last_is_final, const uint8_t *in, size_t inlen, uint8_t *out,
                       size_t outcap, size_t *outlen, int nthreads);

/* Opens in[0..inlen): whole frames numbered from first_seq, of which only the
 * last may be final (then it must end exactly at inlen). Plaintexts go to out
 * back to back; outcap must cover them (inlen is always enough).
 * All or nothing: on KMSENV_E_FORMAT (bad seq field, bad final length, a cut
 * frame, bytes after the final frame) or KMSENV_E_AUTH (a tag), out[0..outcap)
 * is wiped, *outlen = 0 and *failed_index names the first failing frame of
 * the batch. On success *nframes and *final_seen describe the batch. */
int kmsenv_frames_open(int cipher, const uint8_t *key, size_t keylen, const uint8_t *base_iv,
                       const uint8_t *msgid, uint32_t first_seq, size_t frame_size,
                       const uint8_t *in, size_t inlen, uint8_t *out, size_t outcap,
                       size_t *outlen, size_t *nframes, int *final_seen, size_t *failed_index,
                       int nthreads);

/* Incremental GCM (12-byte IV, 16-byte tag) for one long message: aad (at
 * most once, before any data), update any number of times, then final
 * (encrypt: writes the tag) or verify (decrypt: constant-time tag check,
 * KMSENV_E_AUTH on mismatch). In decrypt mode update() outputs UNVERIFIED
 * plaintext: the caller must hold it back until verify() succeeds. The key is
 * copied; one stream object must not be used by two threads at once. */
typedef struct kmsenv_gcm_stream kmsenv_gcm_stream;
int kmsenv_gcm_stream_new(int cipher, const uint8_t *key, size_t keylen, const uint8_t *iv,
                          int decrypt, kmsenv_gcm_stream **out);
int kmsenv_gcm_stream_aad(kmsenv_gcm_stream *s, const uint8_t *aad, size_t aadlen);
int kmsenv_gcm_stream_update(kmsenv_gcm_stream *s, const uint8_t *in, size_t inlen, uint8_t *out);
int kmsenv_gcm_stream_final(kmsenv_gcm_stream *s, uint8_t *tag);
int kmsenv_gcm_stream_verify(kmsenv_gcm_stream *s, const uint8_t *tag);
/* Wipes and frees; NULL is accepted. */
void kmsenv_gcm_stream_free(kmsenv_gcm_stream *s);

#define KMSENV_HASH_SHA256 1
#define KMSENV_HASH_SM3 2
/* HKDF (RFC 5869, extract then expand) with SHA-256 or SM3; outlen <= 255 * 32. */
int kmsenv_hkdf(int hash, const uint8_t *ikm, size_t ikmlen, const uint8_t *salt, size_t saltlen,
                const uint8_t *info, size_t infolen, uint8_t *out, size_t outlen);
/* ---- one complete message per call (the single-message fast path) ---- */

/* Header authentication failed (as opposed to KMSENV_E_AUTH for the body). */
#define KMSENV_E_HEADER_AUTH -8

/* Size of the message kmsenv_seal_message writes, 0 if it cannot be encoded. */
size_t kmsenv_sealed_size(size_t fieldslen, size_t ptlen);

/* Seals one complete DER GCM message under a raw data key (cipher
 * KMSENV_CIPHER_AES or _SM4): sets the key up, computes the header tag (GMAC
 * of auth[0..authlen) under the header IV), writes
 *   30 L { 30 L { fields , 04 0c hiv , 04 10 htag } , 30 L { 04 0c iv , 04 L ct , 04 10 tag } }
 * and wipes the key schedule. fields is the header content before the header
 * IV (version .. context SET). ivs: 24 bytes (header IV, then body IV) or NULL
 * to draw them. *outlen (may be NULL) receives kmsenv_sealed_size(fieldslen, inlen).
 * On Linux an output of 8 MiB or more is advised for transparent huge pages
 * (its whole 2 MiB pages only; KMSENV_HUGEPAGES=0 turns this off): pass
 * memory this process owns, as it is written in full. The same for
 * kmsenv_open_message's out. */
int kmsenv_seal_message(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *fields, size_t fieldslen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen,
                        const uint8_t *in, size_t inlen, const uint8_t *ivs,
                        uint8_t *out, size_t outcap, size_t *outlen);

/* Opens one complete DER GCM message under a raw data key: strict DER for the
 * framing, the header's last two fields (IV of 12, tag of 16) and the body;
 * verifies the header tag over auth (KMSENV_E_HEADER_AUTH), then the body tag
 * (KMSENV_E_AUTH). The caller parsed the header's other fields to build auth.
 * outcap must cover the body ciphertext (msglen always does; out may be NULL
 * with outcap 0 for an empty body). Nothing is left in out unless KMSENV_OK. */
int kmsenv_open_message(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen,
                        const uint8_t *msg, size_t msglen,
                        uint8_t *out, size_t outcap, size_t *outlen);

/* The per-message variants the Python fast path calls: each call from Python
 * costs about as much as the AES-GCM of 1 KiB, so these fold in what would
 * otherwise be separate calls.
 * flags: 0 or KMSENV_WIPE_KEY, which zeroes key[0..keylen) before returning,
 * on every path (the key is copied into the key schedule first).
 * kmsenv_open_message_ex returns the plaintext length (>= 0) or a negative
 * KMSENV_E_* status: no out-parameter for the caller to allocate. Otherwise
 * as kmsenv_seal_message / kmsenv_open_message. */
#define KMSENV_WIPE_KEY 1
int kmsenv_seal_message_ex(int cipher, uint8_t *key, size_t keylen,
                           const uint8_t *fields, size_t fieldslen,
                           const uint8_t *auth, size_t authlen,
                           const uint8_t *aad, size_t aadlen,
                           const uint8_t *in, size_t inlen, const uint8_t *ivs,
                           uint8_t *out, size_t outcap, size_t *outlen, int flags);
int64_t kmsenv_open_message_ex(int cipher, uint8_t *key, size_t keylen,
                               const uint8_t *auth, size_t authlen,
                               const uint8_t *aad, size_t aadlen,
                               const uint8_t *msg, size_t msglen,
                               uint8_t *out, size_t outcap, int flags);

/* A header's fixed sealing inputs (cipher, fields, auth, body AAD), copied
 * once: consecutive messages under one header (a cached or fixed data key)
 * then pass 9 arguments instead of 16, each of which costs a cffi
 * conversion. Read-only once made: threads may share one. */
typedef struct kmsenv_seal_tpl kmsenv_seal_tpl;
int kmsenv_seal_tpl_new(int cipher, const uint8_t *fields, size_t fieldslen,
                        const uint8_t *auth, size_t authlen,
                        const uint8_t *aad, size_t aadlen, kmsenv_seal_tpl **out);
/* NULL is accepted. */
void kmsenv_seal_tpl_free(kmsenv_seal_tpl *t);
/* kmsenv_sealed_size for this header's fields. */
size_t kmsenv_seal_tpl_size(const kmsenv_seal_tpl *t, size_t inlen);
/* kmsenv_seal_message_ex with the template's inputs. outcap may exceed the
 * message; returns the message length (> 0) or a negative KMSENV_E_*. */
int64_t kmsenv_seal_with(const kmsenv_seal_tpl *t, uint8_t *key, size_t keylen,
                         const uint8_t *in, size_t inlen, const uint8_t *ivs,
                         uint8_t *out, size_t outcap, int flags);
/* ---- Arrow columns (arrow.c, compact.c) ----
 * A view of an Arrow variable-size binary/string array: `length` values, value
 * i is data[offsets[i] .. offsets[i+1]) with offsets of offset_width bytes (4:
 * int32 binary/string, 8: int64 large_binary/large_string), already advanced
 * past the array's own offset. validity is Arrow's bitmap (bit validity_offset
 * + i set = value i present) or NULL for no nulls. data_len bounds data: the
 * core checks offsets[0] >= 0, non-decreasing offsets and offsets[length] <=
 * data_len before it reads anything. */
typedef struct {
    size_t length;
    const uint8_t *data;
    size_t data_len;
    const void *offsets;
    int offset_width;
    const uint8_t *validity;
    size_t validity_offset;
} kmsenv_binview;

/* Output of an Arrow binary array: the core writes offsets[1..length] (the
 * caller sets offsets[0], normally 0) and data up to capacity. A null input
 * value gives a zero-length output value; the caller reuses the validity. */
typedef struct {
    uint8_t *data;
    size_t capacity;
    void *offsets;
    int offset_width;
} kmsenv_binout;

/* The value at *stopped belongs to another data key (or another header): open
 * it, and what follows, with that key by calling again from *stopped. */
#define KMSENV_E_OTHER_KEY -9

/* Output bytes kmsenv_arrow_seal_messages needs for `in` (0: cannot encode). */
size_t kmsenv_arrow_messages_size(size_t headerlen, const kmsenv_binview *in);

/* Like kmsenv_gcm_seal_messages, over an Arrow column: every present value
 * becomes one complete DER message sharing the encoded header; ivs is
 * 12 * length bytes or NULL (drawn from the CSPRNG in blocks). */
int kmsenv_arrow_seal_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                               const uint8_t *aad, size_t aadlen, const kmsenv_binview *in,
                               const uint8_t *ivs, kmsenv_binout *out);

/* Opens values start..length-1 of a column of DER messages whose Header TLV
 * equals header (the caller checked that header's tag once). Returns OK;
 * KMSENV_E_OTHER_KEY when value *stopped has another header or is malformed
 * (the caller parses it to tell which); KMSENV_E_AUTH when its body tag fails.
 * out->offsets[start] must hold the output position to continue from. On
 * E_AUTH the output written by this call is wiped. */
int kmsenv_arrow_open_messages(kmsenv_key *k, const uint8_t *header, size_t headerlen,
                               const uint8_t *aad, size_t aadlen, const kmsenv_binview *in,
                               size_t start, size_t *stopped, kmsenv_binout *out);

/* ---- Compact column values (compact.c; docs/format.md section 4) ----
 * Version 2 (written): a key header carries a 32-byte key commitment
 *   commitment = HKDF-H(ikm = data key, salt = empty,
 *                       info = "kmsenv/compact/v2/commitment" || fields_hash)
 * where fields_hash = SHA-256 of the header's version .. context fields; a
 * value is
 *   u8 format (0xC5, or 0xC7 when bound to a row id) || key_ref[8] ||
 *   segment[8] || iv[12] || ct || tag[16]
 * key_ref = SHA-256(key header)[0..8). Values are sealed under a subkey
 *   HKDF-H(ikm = data key, salt = segment, info = "kmsenv/compact/v2/key" || SHA-256(key header))
 * (H = SHA-256 for AES, SM3 for SM4) with AAD = the first 17 bytes ||
 * u32be(column name length) || column name, followed by the row id for 0xC7
 * values. Version 1 (read only, on request): format 0xC1/0xC3, no commitment,
 * info "kmsenv/compact/v1/key", AAD = the first 17 bytes || row id.
 * One segment covers at most KMSENV_COMPACT_MAX_SEGMENT values, so random IVs
 * stay far from the GCM bound under every subkey however many values one data
 * key protects. A reader checks the commitment (kmsenv_compact_check_commitment)
 * once per data key it obtains, before it opens any value under that key. */
#define KMSENV_COMPACT_FORMAT 197
#define KMSENV_COMPACT_FORMAT_V1 193
#define KMSENV_COMPACT_ROW_BOUND 2
#define KMSENV_COMPACT_REF_LEN 8
#define KMSENV_COMPACT_SEGMENT_LEN 8
#define KMSENV_COMPACT_PREFIX_LEN 17
#define KMSENV_COMPACT_OVERHEAD 45
#define KMSENV_COMPACT_MAX_SEGMENT 1048576
#define KMSENV_COMPACT_COMMIT_LEN 32
#define KMSENV_HEADER_HASH_LEN 32

/* The subkey of one segment for a version 1 or 2 value (out: keylen bytes,
 * the caller wipes it). */
int kmsenv_compact_subkey(int version, int cipher, const uint8_t *key, size_t keylen,
                          const uint8_t *header_hash, const uint8_t *segment, uint8_t *out);

/* The key commitment of a version 2 key header (out: KMSENV_COMPACT_COMMIT_LEN
 * bytes). fields_hash: SHA-256 of the header's fields before the commitment. */
int kmsenv_compact_commitment(int cipher, const uint8_t *key, size_t keylen,
                              const uint8_t *fields_hash, uint8_t *out);

/* KMSENV_OK when `commitment` is the one `key` gives (compared with
 * CRYPTO_memcmp), KMSENV_E_AUTH when it is not. */
int kmsenv_compact_check_commitment(int cipher, const uint8_t *key, size_t keylen,
                                    const uint8_t *fields_hash, const uint8_t *commitment);

/* Seals every present value of `in` (at most KMSENV_COMPACT_MAX_SEGMENT) as a
 * version 2 compact value of one segment, bound to the column name
 * name[0..namelen) (NULL/0: the empty name). rows: NULL, or the row ids to
 * bind (one per value, same length; nulls in rows are not allowed where in
 * has a value). out->capacity >= (data span) + KMSENV_COMPACT_OVERHEAD * length. */
int kmsenv_compact_seal(int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *header_hash, const uint8_t *segment,
                        const uint8_t *name, size_t namelen,
                        const kmsenv_binview *in, const kmsenv_binview *rows,
                        const uint8_t *ivs, kmsenv_binout *out);

/* Opens values start..length-1 whose key_ref is header_hash[0..8) and whose
 * format is `version`'s (1 or 2; the key header's version), deriving the
 * subkey again whenever the segment changes. The column name is bound into
 * version 2 values only. The caller has checked the header's commitment
 * (version 2) before the call. Returns OK, or stops at *stopped with
 * KMSENV_E_OTHER_KEY (another key_ref), KMSENV_E_FORMAT (too short, unknown
 * format byte, a value of the other version, or row binding that does not
 * match rows being given) or KMSENV_E_AUTH (tag). On E_FORMAT/E_AUTH the
 * output written by this call is wiped. */
int kmsenv_compact_open(int version, int cipher, const uint8_t *key, size_t keylen,
                        const uint8_t *header_hash, const uint8_t *name, size_t namelen,
                        const kmsenv_binview *in, const kmsenv_binview *rows, size_t start,
                        size_t *stopped, kmsenv_binout *out);
/* ---- SM3 and SM2 signatures (sm2.c; docs/signing.md) ----
 * Public keys are x || y (KMSENV_SM2_POINT_LEN bytes, big-endian coordinates,
 * no 0x04 prefix); a point not on sm2p256v1 is KMSENV_E_ARG. Signatures are
 * DER SEQUENCE { INTEGER r, INTEGER s } (at most KMSENV_SM2_SIG_MAX bytes).
 * KMSENV_E_UNSUPPORTED: this libcrypto has no SM2/SM3. */
#define KMSENV_SM3_LEN 32
#define KMSENV_SM2_POINT_LEN 64
#define KMSENV_SM2_PRIV_LEN 32
#define KMSENV_SM2_SIG_MAX 72
#define KMSENV_SM2_ID_MAX 8191

/* out = SM3(in[0..inlen)), KMSENV_SM3_LEN bytes. */
int kmsenv_sm3(const uint8_t *in, size_t inlen, uint8_t *out);
/* KMSENV_OK when pub is a point on the curve, else KMSENV_E_ARG. */
int kmsenv_sm2_check_public_key(const uint8_t *pub);
/* Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA) for the key pub and the
 * distinguishing ID id[0..idlen) (idlen <= KMSENV_SM2_ID_MAX; KMS and the
 * official SDKs use "1234567812345678"). */
int kmsenv_sm2_z(const uint8_t *pub, const uint8_t *id, size_t idlen, uint8_t *out);
/* e = SM3(Z || msg): the Digest that AsymmetricSign takes for SM2DSA. */
int kmsenv_sm2_digest(const uint8_t *pub, const uint8_t *id, size_t idlen, const uint8_t *msg, size_t msglen,
                      uint8_t *out);
/* Verifies sig over the KMSENV_SM3_LEN-byte digest e: KMSENV_OK when it
 * verifies, KMSENV_E_AUTH when it does not (including a signature that is not
 * strict DER, has trailing bytes, or has r or s outside [1, n-1]). */
int kmsenv_sm2_verify_digest(const uint8_t *pub, const uint8_t *digest, const uint8_t *sig, size_t siglen);
/* Signs the digest e with the private scalar priv (32 bytes big-endian) of the
 * key pub, for tests and local keys (KMS keeps its private keys): sigcap >=
 * KMSENV_SM2_SIG_MAX, *siglen receives the DER length. */
int kmsenv_sm2_sign_digest(const uint8_t *priv, const uint8_t *pub, const uint8_t *digest, uint8_t *sig,
                           size_t sigcap, size_t *siglen);
/* CDEF-END */

#endif
