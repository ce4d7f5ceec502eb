/* tlsbuf: SSL_MODE_RELEASE_BUFFERS on every SSL_CTX of the process (see tlsbuf.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include "tlsbuf.h"

#include <dlfcn.h>

#include <openssl/ssl.h>

/* OpenSSL 3: "SSL_CTX_new() does the same as SSL_CTX_new_ex() except that the default library
 * context is used and no property query string is specified" (SSL_CTX_new(3)). Visible: the
 * build hides symbols by default. */
__attribute__((visibility("default"))) SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(NULL, NULL, meth);
    if (ctx)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    return ctx;
}

bool tlsbuf_active(void)
{
    return dlsym(RTLD_DEFAULT, "SSL_CTX_new") == (void *)SSL_CTX_new;
}
