/*
 * tlsbuf: idle TLS connections hold no record buffers. OpenSSL keeps a ~17 KB read and a ~17 KB
 * write buffer per connection for its whole life unless the context has SSL_MODE_RELEASE_BUFFERS,
 * and Paho (which makes one SSL_CTX per connection, out of our reach) does not set it. aligwd
 * therefore defines SSL_CTX_new itself, exported from the executable so that Paho's calls resolve
 * to it (ordinary ELF symbol interposition): it does exactly what OpenSSL documents SSL_CTX_new
 * to do, SSL_CTX_new_ex(NULL, NULL, method), and sets the mode. Every context in the process gets
 * it (libcurl's for HTTPS registration too); the mode only frees a buffer while it is empty, so
 * nothing else changes. Measured: ~10 KB less RSS per idle TLS device (issue 15's note).
 *
 * If Paho ever stops calling SSL_CTX_new, or the symbol is not interposed, nothing breaks: the
 * buffers are simply kept, and tlsbuf_active() says so at start.
 */
#ifndef ALIGW_TLSBUF_H
#define ALIGW_TLSBUF_H

#include <stdbool.h>

/* True when SSL_CTX_new, as the dynamic linker resolves it for libraries, is tlsbuf's. */
bool tlsbuf_active(void);

#endif
