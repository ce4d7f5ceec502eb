/*
 * tlsprobe: a TLS handshake of our own that says why Paho's failed (see tlsprobe.h).
 *
 * Probes live in one list owned by the loop thread, keyed by endpoint (host, port, CA file,
 * host name check). A probe is running (its uv_work_t on the thread pool, waiters queued) or
 * done (result kept for TLSPROBE_TTL_MS). The worker touches only its own probe's copies of the
 * target and its result; the list and the waiters are loop-only.
 */
#include "tlsprobe.h"

#include "errors.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct waiter {
    struct waiter *next;
    tlsprobe_cb cb;
    void *arg;
};

struct probe {
    struct probe *next;
    char *key;
    struct tlsprobe_target t; /* strings point into key's copies below */
    char *host, *ca_file;
    uv_work_t work;
    bool running;
    uint64_t done_at;
    struct tlsprobe_result res;
    struct waiter *waiters;
};

static struct {
    struct probe *list;
    bool closing;
} P;

/* ---- the blocking probe (thread pool) ------------------------------------------------------ */

/* Connects with a timeout; returns the fd (blocking, with I/O timeouts) or a negative errno. */
static int tcp_connect(const struct tlsprobe_target *t, char *why, size_t len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *a;
    char port[16];
    int err = -ECONNREFUSED, fd = -1;

    snprintf(port, sizeof(port), "%d", t->port);
    int rc = getaddrinfo(t->host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(why, len, "cannot resolve %s: %s", t->host, gai_strerror(rc));
        return -EHOSTUNREACH;
    }
    for (a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n = poll(&p, 1, t->timeout_ms);
            if (n == 1) {
                int soerr = 0;
                socklen_t sl = sizeof(soerr);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr == 0)
                    break;
                err = -soerr;
            } else {
                err = n == 0 ? -ETIMEDOUT : -errno;
            }
        } else {
            err = -errno;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(why, len, "TCP connection to %s:%d failed: %s", t->host, t->port, strerror(-err));
        return err;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = t->timeout_ms / 1000, .tv_usec = t->timeout_ms % 1000 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Appends prefix and s, with anything unprintable in s as '?' (names come from the peer). */
static void append(char *out, size_t len, const char *prefix, const char *s)
{
    size_t used = strlen(out);
    if (used + 1 >= len)
        return;
    snprintf(out + used, len - used, "%s%s", prefix, s);
    for (char *p = out + used + strlen(prefix); p < out + len && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            *p = '?';
}

/* "CN=x, DNS:a, IP:b, issued by CN=y" for the certificate the server presented. */
static void describe(X509 *x, char *out, size_t len)
{
    char cn[128] = "", icn[128] = "";
    GENERAL_NAMES *names;

    out[0] = '\0';
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn));
    X509_NAME_get_text_by_NID(X509_get_issuer_name(x), NID_commonName, icn, sizeof(icn));
    append(out, len, "CN=", cn[0] ? cn : "(none)");
    names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names) && i < 4; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        char buf[INET6_ADDRSTRLEN + 1] = "";
        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int n = ASN1_STRING_length(g->d.dNSName);
            snprintf(buf, sizeof(buf), "%.*s", n, (const char *)d);
            append(out, len, ", DNS:", buf);
        } else if (g->type == GEN_IPADD) {
            int n = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
            if (inet_ntop(n == 16 ? AF_INET6 : AF_INET, d, buf, sizeof(buf)) && (n == 4 || n == 16))
                append(out, len, ", IP:", buf);
        }
    }
    GENERAL_NAMES_free(names);
    append(out, len, ", issued by CN=", icn[0] ? icn : "(none)");
}

static int leaf_index = -1;
static pthread_once_t leaf_once = PTHREAD_ONCE_INIT;

static void leaf_index_init(void)
{
    leaf_index = SSL_get_ex_new_index(0, "aligw tlsprobe leaf", NULL, NULL, NULL);
}

/* Keeps the server's own certificate, whatever the verdict, to say what it presented. */
static int keep_leaf(int ok, X509_STORE_CTX *ctx)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    X509 *leaf = X509_STORE_CTX_get0_cert(ctx);
    if (ssl && leaf && !SSL_get_ex_data(ssl, leaf_index) && X509_up_ref(leaf))
        SSL_set_ex_data(ssl, leaf_index, leaf);
    return ok;
}

static bool is_ip(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static const char *verify_hint(long v)
{
    switch (v) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
        return "; check cloud.ca_file";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return "; check the host name";
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return "; check the system clock";
    default:
        return "";
    }
}

void tlsprobe_run_blocking(const struct tlsprobe_target *t, struct tlsprobe_result *r)
{
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    X509 *leaf = NULL;
    char peer[200] = "";
    int fd;

    memset(r, 0, sizeof(*r));
    ERR_clear_error();
    pthread_once(&leaf_once, leaf_index_init);
    fd = tcp_connect(t, r->reason, sizeof(r->reason));
    if (fd < 0) {
        r->status = fd;
        return;
    }
    r->status = ALIGW_ETLS;
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(r->reason, sizeof(r->reason), "cannot create a TLS context");
        goto out;
    }
    if ((t->ca_file ? SSL_CTX_load_verify_locations(ctx, t->ca_file, NULL)
                    : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        unsigned long e = ERR_get_error();
        snprintf(r->reason, sizeof(r->reason), "cannot load the CA file %s (cloud.ca_file): %s",
                 t->ca_file ? t->ca_file : "(system default)",
                 e ? ERR_reason_error_string(e) : "no certificate in it");
        goto out;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, keep_leaf);
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        snprintf(r->reason, sizeof(r->reason), "cannot create a TLS connection");
        goto out;
    }
    if (!is_ip(t->host))
        SSL_set_tlsext_host_name(ssl, t->host);
    if (t->verify_hostname) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (is_ip(t->host))
            X509_VERIFY_PARAM_set1_ip_asc(vp, t->host);
        else
            X509_VERIFY_PARAM_set1_host(vp, t->host, 0);
    }
    int rc = SSL_connect(ssl);
    leaf = SSL_get_ex_data(ssl, leaf_index);
    if (leaf)
        describe(leaf, peer, sizeof(peer));
    if (rc == 1) {
        r->status = 0;
        snprintf(r->reason, sizeof(r->reason), "TLS handshake and certificate check pass (%s, %s)",
                 SSL_get_version(ssl), SSL_get_cipher_name(ssl));
        goto out;
    }
    long v = SSL_get_verify_result(ssl);
    if (v != X509_V_OK) {
        snprintf(r->reason, sizeof(r->reason),
                 "certificate verify failed: %s (server presented %s%s)",
                 X509_verify_cert_error_string(v), peer[0] ? peer : "nothing", verify_hint(v));
        goto out;
    }
    int serr = SSL_get_error(ssl, rc);
    unsigned long e = ERR_peek_error();
    if (e) {
        const char *why = ERR_reason_error_string(e);
        snprintf(r->reason, sizeof(r->reason),
                 "handshake failed: %s (is %s:%d a TLS endpoint? a proxy or portal in the path?)",
                 why ? why : "unknown error", t->host, t->port);
    } else if (serr == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        snprintf(r->reason, sizeof(r->reason),
                 "no TLS answer within %d ms (is %s:%d a TLS endpoint?)", t->timeout_ms, t->host,
                 t->port);
    } else {
        snprintf(r->reason, sizeof(r->reason),
                 "the server closed the connection during the TLS handshake");
    }
out:
    if (leaf)
        X509_free(leaf);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    ERR_clear_error();
}

/* ---- shared probes (loop thread) ----------------------------------------------------------- */

static void probe_free(struct probe *p)
{
    while (p->waiters) {
        struct waiter *w = p->waiters;
        p->waiters = w->next;
        free(w);
    }
    free(p->key);
    free(p->host);
    free(p->ca_file);
    free(p);
}

static char *make_key(const struct tlsprobe_target *t)
{
    char *k = NULL;
    if (asprintf(&k, "%s\n%d\n%s\n%d", t->host, t->port, t->ca_file ? t->ca_file : "",
                 t->verify_hostname) < 0)
        return NULL;
    return k;
}

/* Finds the probe for t, dropping results that are too old on the way. */
static struct probe *find(uv_loop_t *loop, const struct tlsprobe_target *t)
{
    char *key = make_key(t);
    struct probe **pp = &P.list, *found = NULL;
    uint64_t now = uv_now(loop);

    while (*pp) {
        struct probe *p = *pp;
        if (!p->running && now - p->done_at > TLSPROBE_TTL_MS) {
            *pp = p->next;
            probe_free(p);
            continue;
        }
        if (key && strcmp(p->key, key) == 0)
            found = p;
        pp = &p->next;
    }
    free(key);
    return found;
}

bool tlsprobe_cached(uv_loop_t *loop, const struct tlsprobe_target *t, struct tlsprobe_result *r)
{
    struct probe *p = find(loop, t);
    if (!p || p->running)
        return false;
    *r = p->res;
    return true;
}

static void work_cb(uv_work_t *w)
{
    struct probe *p = w->data;
    tlsprobe_run_blocking(&p->t, &p->res);
}

static void after_cb(uv_work_t *w, int status)
{
    struct probe *p = w->data;
    struct waiter *list = p->waiters;

    p->running = false;
    p->done_at = uv_now(w->loop);
    p->waiters = NULL;
    if (status < 0) {
        p->res.status = status;
        snprintf(p->res.reason, sizeof(p->res.reason), "probe cancelled");
    }
    if (P.closing) {
        struct probe **pp = &P.list;
        while (*pp && *pp != p)
            pp = &(*pp)->next;
        if (*pp)
            *pp = p->next;
        p->waiters = list;
        probe_free(p);
        return;
    }
    while (list) {
        struct waiter *next = list->next;
        list->cb(list->arg, &p->res);
        free(list);
        list = next;
    }
}

int tlsprobe_start(uv_loop_t *loop, const struct tlsprobe_target *t, tlsprobe_cb cb, void *arg)
{
    struct probe *p = find(loop, t);
    struct waiter *w = calloc(1, sizeof(*w));
    int rc;

    if (!w)
        return -ENOMEM;
    P.closing = false;
    w->cb = cb;
    w->arg = arg;
    if (p && p->running) {
        w->next = p->waiters;
        p->waiters = w;
        return 0;
    }
    if (p) { /* a finished result: probe again (the caller saw it was stale or wants fresh) */
        struct probe **pp = &P.list;
        while (*pp != p)
            pp = &(*pp)->next;
        *pp = p->next;
        probe_free(p);
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        free(w);
        return -ENOMEM;
    }
    p->key = make_key(t);
    p->host = strdup(t->host);
    p->ca_file = t->ca_file ? strdup(t->ca_file) : NULL;
    if (!p->key || !p->host || (t->ca_file && !p->ca_file)) {
        free(w);
        probe_free(p);
        return -ENOMEM;
    }
    p->t = *t;
    p->t.host = p->host;
    p->t.ca_file = p->ca_file;
    if (p->t.timeout_ms <= 0)
        p->t.timeout_ms = 5000;
    p->waiters = w;
    p->work.data = p;
    p->running = true;
    rc = uv_queue_work(loop, &p->work, work_cb, after_cb);
    if (rc < 0) {
        probe_free(p);
        return rc;
    }
    p->next = P.list;
    P.list = p;
    return 0;
}

void tlsprobe_close(void)
{
    struct probe **pp = &P.list;
    P.closing = true;
    while (*pp) {
        struct probe *p = *pp;
        while (p->waiters) { /* no more callbacks */
            struct waiter *w = p->waiters;
            p->waiters = w->next;
            free(w);
        }
        if (p->running) { /* freed by after_cb */
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        probe_free(p);
    }
}
