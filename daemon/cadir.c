/* cadir: hashed CA directories built from PEM trust files (see cadir.h). */
#include "cadir.h"

#include "errors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define MAX_PEM_BYTES (16 << 20)

struct made {
    struct made *next;
    char *dir;
};

struct ent {
    struct ent *next;
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    const char *dir; /* one of the made list */
};

static struct {
    char *root;
    struct ent *ents;
    struct made *made;
} C;

/* Removes dir's plain entries and dir itself (one level: what this module writes). */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[PATH_MAX];

    if (!d)
        return;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) < (int)sizeof(p))
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int cadir_init(const char *root)
{
    DIR *d;
    struct dirent *e;
    char p[PATH_MAX];

    cadir_close();
    if (mkdir(root, 0755) < 0 && errno != EEXIST)
        return -errno;
    C.root = strdup(root);
    if (!C.root)
        return -ENOMEM;
    d = opendir(root);
    if (!d)
        return -errno;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (snprintf(p, sizeof(p), "%s/%s", root, e->d_name) < (int)sizeof(p))
            remove_dir(p);
    }
    closedir(d);
    return 0;
}

void cadir_close(void)
{
    while (C.ents) {
        struct ent *e = C.ents;
        C.ents = e->next;
        free(e->path);
        free(e);
    }
    while (C.made) {
        struct made *m = C.made;
        C.made = m->next;
        remove_dir(m->dir);
        free(m->dir);
        free(m);
    }
    free(C.root);
    C.root = NULL;
}

static int read_file(const char *path, unsigned char **out, size_t *len, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc = 0;

    if (fd < 0)
        return -errno;
    if (fstat(fd, st) < 0) {
        rc = -errno;
        goto out;
    }
    if (st->st_size > MAX_PEM_BYTES) {
        rc = -EFBIG;
        goto out;
    }
    buf = malloc((size_t)st->st_size + 1);
    if (!buf) {
        rc = -ENOMEM;
        goto out;
    }
    while (n < (size_t)st->st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st->st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* Writes one object as <hash>.<n> (certificates) or <hash>.r<n> (CRLs), n the first free. */
static int write_one(const char *dir, unsigned long hash, X509 *x, X509_CRL *crl)
{
    char p[PATH_MAX];
    for (int n = 0; n < 1000; n++) {
        if (snprintf(p, sizeof(p), "%s/%08lx.%s%d", dir, hash, crl ? "r" : "", n) >= (int)sizeof(p))
            return -ENAMETOOLONG;
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno == EEXIST)
            continue;
        if (fd < 0)
            return -errno;
        FILE *f = fdopen(fd, "w");
        if (!f) {
            int rc = -errno;
            close(fd);
            return rc;
        }
        /* _AUX keeps the trust settings of a "TRUSTED CERTIFICATE" entry; a plain certificate
         * reads back the same. */
        int ok = crl ? PEM_write_X509_CRL(f, crl) : PEM_write_X509_AUX(f, x);
        if (fclose(f) != 0 || !ok)
            return -EIO;
        return 0;
    }
    return -EMLINK;
}

/* Builds root/<name> from the objects in pem; *dir_out gets its path. 0 or a negative error. */
static int build(const unsigned char *pem, size_t len, const char *name, char **dir_out)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    BIO *bio = NULL;
    STACK_OF(X509_INFO) *infos = NULL;
    int rc = 0, n_certs = 0;

    if (snprintf(dir, sizeof(dir), "%s/%s", C.root, name) >= (int)sizeof(dir) ||
        snprintf(tmp, sizeof(tmp), "%s/.new-XXXXXX", C.root) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    if (access(dir, F_OK) == 0)
        goto done; /* the same content, from another path or an earlier build */
    bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio)
        return -ENOMEM;
    /* What SSL_CTX_load_verify_locations(CAfile) reads: X509_load_cert_crl_file. */
    infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (!infos)
        return ALIGW_ECONFIG;
    if (!mkdtemp(tmp)) {
        rc = -errno;
        goto out;
    }
    for (int i = 0; i < sk_X509_INFO_num(infos) && rc == 0; i++) {
        X509_INFO *in = sk_X509_INFO_value(infos, i);
        int ok = 1;
        if (in->x509) {
            unsigned long h = X509_NAME_hash_ex(X509_get_subject_name(in->x509), NULL, NULL, &ok);
            rc = ok ? write_one(tmp, h, in->x509, NULL) : -EINVAL;
            n_certs++;
        }
        if (rc == 0 && in->crl) {
            unsigned long h = X509_NAME_hash_ex(X509_CRL_get_issuer(in->crl), NULL, NULL, &ok);
            rc = ok ? write_one(tmp, h, NULL, in->crl) : -EINVAL;
        }
    }
    if (rc == 0 && n_certs == 0)
        rc = ALIGW_ECONFIG;
    if (rc == 0 && chmod(tmp, 0755) < 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, dir) < 0 && errno != EEXIST && errno != ENOTEMPTY)
        rc = -errno;
    remove_dir(tmp); /* gone after a rename; left behind on failure or a lost race */
    if (rc < 0)
        goto out;
done:
    *dir_out = strdup(dir);
    rc = *dir_out ? 0 : -ENOMEM;
out:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    return rc;
}

static int content_name(const unsigned char *pem, size_t len, char name[33])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(pem, len, md, &mdlen, EVP_sha256(), NULL) || mdlen < 16)
        return -EIO;
    for (int i = 0; i < 16; i++)
        snprintf(name + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int cadir_get(const char *pem_path, const char **dir)
{
    struct stat st;
    struct ent *e;
    unsigned char *pem = NULL;
    size_t len = 0;
    char name[33], *made_dir = NULL;
    int rc;

    if (!C.root)
        return -ENOTCONN;
    if (stat(pem_path, &st) < 0)
        return -errno;
    for (e = C.ents; e; e = e->next)
        if (!strcmp(e->path, pem_path))
            break;
    if (e && e->dev == st.st_dev && e->ino == st.st_ino && e->size == st.st_size &&
        e->mtime.tv_sec == st.st_mtim.tv_sec && e->mtime.tv_nsec == st.st_mtim.tv_nsec) {
        *dir = e->dir;
        return 0;
    }
    rc = read_file(pem_path, &pem, &len, &st);
    if (rc == 0)
        rc = content_name(pem, len, name);
    if (rc == 0) {
        for (struct made *m = C.made; m; m = m->next) {
            const char *slash = strrchr(m->dir, '/');
            if (slash && !strcmp(slash + 1, name))
                made_dir = m->dir;
        }
    }
    if (rc == 0 && !made_dir) {
        char *d = NULL;
        struct made *m = malloc(sizeof(*m));
        rc = m ? build(pem, len, name, &d) : -ENOMEM;
        if (rc == 0) {
            m->dir = made_dir = d;
            m->next = C.made;
            C.made = m;
        } else {
            free(m);
        }
    }
    free(pem);
    if (rc < 0)
        return rc;
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e || !(e->path = strdup(pem_path))) {
            free(e);
            return -ENOMEM;
        }
        e->next = C.ents;
        C.ents = e;
    }
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    e->size = st.st_size;
    e->mtime = st.st_mtim;
    e->dir = made_dir;
    *dir = made_dir;
    return 0;
}
