/*
 * tlsbuf: the executable's SSL_CTX_new is the one the dynamic linker hands to libraries (Paho
 * resolves it through the global scope, as dlsym(RTLD_DEFAULT) does), and every context it makes
 * releases idle record buffers while keeping OpenSSL's defaults otherwise.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "check.h"
#include "tlsbuf.h"

#include <dlfcn.h>

#include <openssl/ssl.h>

int main(void)
{
    CHECK(tlsbuf_active());

    /* Called the way a library calls it: through the symbol the global scope resolves. */
    SSL_CTX *(*lib_new)(const SSL_METHOD *) =
        (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_DEFAULT, "SSL_CTX_new");
    CHECK(lib_new != NULL);
    SSL_CTX *ctx = lib_new ? lib_new(TLS_client_method()) : NULL;
    CHECK(ctx != NULL);
    if (ctx) {
        CHECK(SSL_CTX_get_mode(ctx) & SSL_MODE_RELEASE_BUFFERS);
        /* Nothing else differs from a context made by OpenSSL's own constructor. */
        SSL_CTX *ref = SSL_CTX_new_ex(NULL, NULL, TLS_client_method());
        CHECK(ref != NULL);
        if (ref) {
            CHECK_INT(SSL_CTX_get_mode(ctx) & ~SSL_MODE_RELEASE_BUFFERS, SSL_CTX_get_mode(ref));
            CHECK_INT(SSL_CTX_get_options(ctx), SSL_CTX_get_options(ref));
            CHECK_INT(SSL_CTX_get_verify_mode(ctx), SSL_CTX_get_verify_mode(ref));
            CHECK_INT(SSL_CTX_get_security_level(ctx), SSL_CTX_get_security_level(ref));
            SSL_CTX_free(ref);
        }
        SSL *ssl = SSL_new(ctx);
        CHECK(ssl && (SSL_get_mode(ssl) & SSL_MODE_RELEASE_BUFFERS));
        SSL_free(ssl);
        SSL_CTX_free(ctx);
    }
    return check_done();
}
