"""The Alibaba Encryption SDK message format (ASN.1 DER), hand-written for speed."""
