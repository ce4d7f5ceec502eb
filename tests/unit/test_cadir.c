/*
 * cadir: a hashed CA directory trusts exactly what its PEM file trusts. Each case verifies real
 * certificates (data/cadir: two test CAs, a leaf of each, a leaf of a CA in no file) once through
 * the file loaded whole (CAfile, what Paho did) and once through the directory (CApath, what the
 * session layer now passes), and expects the same verdict; then the directory's life cycle.
 */
#include "cadir.h"
#include "check.h"
#include "errors.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#define DATA "data/cadir/"

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return x;
}

/* X509_verify_cert of leaf for a TLS server, against a CAfile or a CApath. */
static int verify(const char *leaf_path, const char *file, const char *dir)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *leaf = load_cert(leaf_path);
    int ok = -1;

    if (st && ctx && leaf && X509_STORE_load_locations(st, file, dir) == 1 &&
        X509_STORE_CTX_init(ctx, st, leaf, NULL) == 1) {
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER); /* as libssl does */
        ok = X509_verify_cert(ctx);
    }
    X509_free(leaf);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

static int cat(const char *out, const char *a, const char *b)
{
    FILE *o = fopen(out, "w");
    const char *in[] = {a, b};
    char buf[4096];
    size_t n;
    if (!o)
        return -1;
    for (int i = 0; i < 2 && in[i]; i++) {
        FILE *f = fopen(in[i], "r");
        if (!f) {
            fclose(o);
            return -1;
        }
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
            fwrite(buf, 1, n, o);
        fclose(f);
    }
    return fclose(o);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* The same verdict through the file and through its directory, for every leaf. */
static void same_verdicts(const char *file, const char *dir, int want1, int want2, int wantx)
{
    CHECK_INT(verify(DATA "leaf1.pem", file, NULL), want1);
    CHECK_INT(verify(DATA "leaf1.pem", NULL, dir), want1);
    CHECK_INT(verify(DATA "leaf2.pem", file, NULL), want2);
    CHECK_INT(verify(DATA "leaf2.pem", NULL, dir), want2);
    CHECK_INT(verify(DATA "leafx.pem", file, NULL), wantx);
    CHECK_INT(verify(DATA "leafx.pem", NULL, dir), wantx);
}

int main(void)
{
    char tmp[] = "/tmp/aligw-test-cadir-XXXXXX", root[256], pem[256], empty[256];
    const char *dir = NULL, *dir2 = NULL, *again = NULL;
    char *saved = NULL;

    CHECK(mkdtemp(tmp) != NULL);
    snprintf(root, sizeof(root), "%s/ca", tmp);
    snprintf(pem, sizeof(pem), "%s/trust.pem", tmp);
    snprintf(empty, sizeof(empty), "%s/empty.pem", tmp);

    CHECK_INT(cadir_get(DATA "ca1.pem", &dir), -ENOTCONN);

    /* A leftover of an earlier run is removed at init. */
    CHECK_INT(mkdir(root, 0755), 0);
    char stale[300];
    snprintf(stale, sizeof(stale), "%s/0123456789abcdef", root);
    CHECK_INT(mkdir(stale, 0755), 0);
    CHECK_INT(cadir_init(root), 0);
    CHECK_INT(count_entries(root), 0);

    /* ca1 and ca2 as TRUSTED CERTIFICATE (serverAuth): both leaves verify, the stranger not. */
    CHECK_INT(cat(pem, DATA "ca1.pem", DATA "ca2-trusted.pem"), 0);
    CHECK_INT(cadir_get(pem, &dir), 0);
    CHECK(dir && strncmp(dir, root, strlen(root)) == 0);
    CHECK_INT(count_entries(dir), 2); /* <hash>.0 per certificate */
    same_verdicts(pem, dir, 1, 1, 0);
    saved = dir ? strdup(dir) : NULL;

    /* Unchanged file: the same directory, without rebuilding. */
    CHECK_INT(cadir_get(pem, &again), 0);
    CHECK(again == dir);

    /* ca2 rejected for serverAuth: leaf2 is refused both ways (the trust settings survive). */
    sleep(1); /* a new mtime even on coarse file systems */
    CHECK_INT(cat(pem, DATA "ca1.pem", DATA "ca2-rejected.pem"), 0);
    CHECK_INT(cadir_get(pem, &dir2), 0);
    CHECK(dir2 && saved && strcmp(dir2, saved) != 0); /* new content, new directory */
    same_verdicts(pem, dir2, 1, 0, 0);
    CHECK(access(saved, F_OK) == 0); /* the old one stays for sessions opened with it */

    /* ca1 alone. */
    sleep(1);
    CHECK_INT(cat(pem, DATA "ca1.pem", NULL), 0);
    CHECK_INT(cadir_get(pem, &dir), 0);
    same_verdicts(pem, dir, 1, 0, 0);

    /* No certificate, no file. */
    FILE *f = fopen(empty, "w");
    if (f) {
        fputs("not a certificate\n", f);
        fclose(f);
    }
    CHECK_INT(cadir_get(empty, &dir), ALIGW_ECONFIG);
    CHECK_INT(cadir_get(DATA "missing.pem", &dir), -ENOENT);

    /* close removes every directory it made. */
    cadir_close();
    CHECK_INT(count_entries(root), 0);
    CHECK_INT(cadir_get(pem, &dir), -ENOTCONN);

    free(saved);
    unlink(pem);
    unlink(empty);
    rmdir(root);
    rmdir(tmp);
    return check_done();
}
