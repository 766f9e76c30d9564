/*
 * gcm_vectors.h: the GCM specification's AES-GCM test cases (McGrew & Viega,
 * "The Galois/Counter Mode of Operation", cases 1, 2, 4, 13, 14, 16), in hex,
 * shared by the SIMD kernel tests (test_simd.c, test_aes512.c), and RFC 8998's
 * SM4-GCM vector (test_core.c, test_simd.c, test_sm4_gfni.c). Include after
 * check.h (unhex).
 */
#ifndef KMSENV_TEST_GCM_VECTORS_H
#define KMSENV_TEST_GCM_VECTORS_H

struct gcm_spec_vector {
    const char *key, *iv, *pt, *aad, *ct, *tag;
};

static const struct gcm_spec_vector gcm_spec_vectors[] = {
    {"00000000000000000000000000000000", "000000000000000000000000", "", "", "",
     "58e2fccefa7e3061367f1d57a4e7455a"},
    {"00000000000000000000000000000000", "000000000000000000000000",
     "00000000000000000000000000000000", "", "0388dace60b6a392f328c2b971b2fe78",
     "ab6e47d42cec13bdf53a67b21257bddf"},
    {"feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
     "49a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5a"
     "ac84aa051ba30b396a0aac973d58e091",
     "5bc94fbc3221a5db94fae95ae7121a47"},
    {"0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
    {"0000000000000000000000000000000000000000000000000000000000000000",
     "000000000000000000000000", "00000000000000000000000000000000", "",
     "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
    {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e24"
     "49a6b525b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b10"
     "56828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

/* RFC 8998 appendix A.1 (SM4-GCM): key, IV, 20 bytes of AAD, 64 of
 * plaintext and ciphertext, tag. Cross-checked against cryptography's SM4-GCM. */
static inline void rfc8998_a1(uint8_t key[16], uint8_t iv[12], uint8_t aad[20], uint8_t pt[64],
                              uint8_t ct[64], uint8_t tag[16])
{
    unhex("0123456789ABCDEFFEDCBA9876543210", key);
    unhex("00001234567800000000ABCD", iv);
    unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2", aad);
    unhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
          "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
          pt);
    unhex("17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
          "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D",
          ct);
    unhex("83DE3541E4C2B58177E065A9BF7B62EC", tag);
}

#endif
