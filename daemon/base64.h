/*
 * base64: the standard alphabet (RFC 4648 §4), for binary payloads on the local API
 * (payload_b64 in requests, watch events) and in aligwctl. Pure functions, any thread.
 */
#ifndef ALIGW_BASE64_H
#define ALIGW_BASE64_H

#include <stddef.h>

/* Encodes n bytes with '=' padding. Returns a NUL-terminated string to free(), or NULL. */
char *base64_encode(const void *in, size_t n);

/*
 * Decodes n characters (padding optional, no whitespace) into out, which must hold n / 4 * 3 + 3
 * bytes. Returns the number of bytes, or -1 for a character outside the alphabet or a length no
 * base64 text has.
 */
long base64_decode(const char *in, size_t n, unsigned char *out);

#endif
