/*
 * cabundle: the shipped conf/aliyun-ca-bundle.pem holds exactly the five roots the Aliyun SDKs
 * trust (reference/aliyun-protocol.md §1.2), each a parseable self-signed CA certificate with
 * the recorded SHA-256 fingerprint, none expired. A broken, swapped or missing root fails here
 * rather than at a customer's first login.
 */
#include "check.h"

#include <stdio.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#ifndef ALIGW_SOURCE_DIR
#define ALIGW_SOURCE_DIR "../.."
#endif

static const struct {
    const char *name;
    const char *sha256;
} roots[] = {
    {"GlobalSign Root CA (R1)", "EB:D4:10:40:E4:BB:3E:C7:42:C9:E3:81:D3:1E:F2:A4:1A:48:B6:68:5C:"
                                "96:E7:CE:F3:C1:DF:6C:D4:33:1C:99"},
    {"GlobalSign Root CA - R6", "2C:AB:EA:FE:37:D0:6C:A2:2A:BA:73:91:C0:03:3D:25:98:29:52:C4:53:"
                                "64:73:49:76:3A:3A:B5:AD:6C:CF:69"},
    {"GlobalSign Root E46", "CB:B9:C4:4D:84:B8:04:3E:10:50:EA:31:A6:9F:51:49:55:D7:BF:D2:E2:C6:"
                            "B4:93:01:01:9A:D6:1D:9F:50:58"},
    {"GlobalSign Root R46", "4F:A3:12:6D:8D:3A:11:D1:C4:85:5A:4F:80:7C:BA:D6:CF:91:9D:3A:5A:88:"
                            "B0:3B:EA:2C:63:72:D9:3C:40:C9"},
    {"Aliyun IoT Root CA", "7C:A4:38:A3:97:6B:52:42:D2:31:F8:61:49:98:22:DA:85:58:31:38:27:35:"
                           "83:6B:36:1E:7E:97:15:66:16:76"},
};
#define N_ROOTS (sizeof(roots) / sizeof(roots[0]))

static void fingerprint(X509 *x, char out[96])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hex[] = "0123456789ABCDEF";
    char *p = out;

    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned int i = 0; i < n; i++) {
        if (i)
            *p++ = ':';
        *p++ = hex[md[i] >> 4];
        *p++ = hex[md[i] & 15];
    }
    *p = '\0';
}

int main(void)
{
    const char *path = ALIGW_SOURCE_DIR "/conf/aliyun-ca-bundle.pem";
    FILE *f = fopen(path, "r");
    int seen[N_ROOTS] = {0};
    size_t count = 0;
    X509 *x;

    CHECK(f != NULL);
    if (!f) {
        perror(path);
        return check_done();
    }
    while ((x = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
        char fp[96];
        count++;
        fingerprint(x, fp);
        size_t i;
        for (i = 0; i < N_ROOTS; i++)
            if (strcmp(fp, roots[i].sha256) == 0)
                break;
        if (i == N_ROOTS)
            fprintf(stderr, "unexpected certificate #%zu in the bundle: %s\n", count, fp);
        CHECK(i < N_ROOTS);
        if (i < N_ROOTS)
            seen[i]++;
        /* a root: a CA, self-signed (issuer = subject, and its own key verifies it) */
        CHECK(X509_check_ca(x) >= 1);
        CHECK(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0);
        EVP_PKEY *k = X509_get0_pubkey(x);
        CHECK(k != NULL && X509_verify(x, k) == 1);
        /* not expired today */
        CHECK(X509_cmp_current_time(X509_get0_notAfter(x)) > 0);
        X509_free(x);
    }
    fclose(f);
    CHECK_INT(count, N_ROOTS);
    for (size_t i = 0; i < N_ROOTS; i++) {
        if (seen[i] != 1)
            fprintf(stderr, "%s (%s) found %d times\n", roots[i].name, roots[i].sha256, seen[i]);
        CHECK_INT(seen[i], 1);
    }
    return check_done();
}
