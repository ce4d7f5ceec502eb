/*
 * dynreg: one-product-one-secret registration (see dynreg.h). The HTTPS request runs in
 * uv_queue_work; the request struct owns copies of every string so the caller's config may go
 * away meanwhile. The product secret is wiped from memory when the request is freed.
 */
#include "dynreg.h"

#include "errors.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <dlfcn.h>
#include <jansson.h>
#include <openssl/rand.h>

struct https_job {
    uv_work_t work;
    dynreg_cb cb;
    void *arg;
    char *url, *ca_file, *form;
    bool verify;
    char body[8192];
    size_t body_len;
    int status;
    char curl_error[CURL_ERROR_SIZE];
};

/*
 * libcurl is loaded on first use, not linked: a gateway whose devices all have their secrets
 * never maps it and the dozen libraries it pulls in (several MB of resident memory).
 */
static struct {
    void *lib;
    char error[160];
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
} C;

static void curl_load_once(void)
{
    void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    const char *e;

    if (!lib) {
        snprintf(C.error, sizeof(C.error), "%s", (e = dlerror()) ? e : "dlopen failed");
        return;
    }
    C.global_init = (CURLcode(*)(long))dlsym(lib, "curl_global_init");
    C.easy_init = (CURL * (*)(void)) dlsym(lib, "curl_easy_init");
    C.easy_setopt = (CURLcode(*)(CURL *, CURLoption, ...))dlsym(lib, "curl_easy_setopt");
    C.easy_perform = (CURLcode(*)(CURL *))dlsym(lib, "curl_easy_perform");
    C.easy_getinfo = (CURLcode(*)(CURL *, CURLINFO, ...))dlsym(lib, "curl_easy_getinfo");
    C.easy_cleanup = (void (*)(CURL *))dlsym(lib, "curl_easy_cleanup");
    C.slist_append = (struct curl_slist * (*)(struct curl_slist *, const char *))
        dlsym(lib, "curl_slist_append");
    C.slist_free_all = (void (*)(struct curl_slist *))dlsym(lib, "curl_slist_free_all");
    if (!C.global_init || !C.easy_init || !C.easy_setopt || !C.easy_perform || !C.easy_getinfo ||
        !C.easy_cleanup || !C.slist_append || !C.slist_free_all) {
        snprintf(C.error, sizeof(C.error), "libcurl.so.4 lacks a function aligw needs");
        dlclose(lib);
        return;
    }
    C.global_init(CURL_GLOBAL_DEFAULT);
    C.lib = lib;
}

void dynreg_random(char out[17])
{
    unsigned char b[8];
    static const char hex[] = "0123456789abcdef";
    if (RAND_bytes(b, sizeof(b)) != 1) {
        uint64_t t = (uint64_t)uv_hrtime();
        memcpy(b, &t, sizeof(b));
    }
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[16] = '\0';
}

/* Copies src into dst, cutting it short if it does not fit (only messages are ever cut). */
static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size)
        n = size - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

int dynreg_parse_https_reply(const char *body, struct dynreg_result *out)
{
    json_error_t e;
    json_t *root = json_loads(body, 0, &e);
    int rc = ALIGW_EPROTO;
    json_int_t code;

    memset(out, 0, sizeof(*out));
    if (!json_is_object(root))
        goto out;
    json_t *jc = json_object_get(root, "code");
    if (json_is_integer(jc))
        code = json_integer_value(jc);
    else if (json_is_string(jc))
        code = strtoll(json_string_value(jc), NULL, 10);
    else
        goto out;
    out->platform_code = (int)code;
    copy_str(out->message, sizeof(out->message),
             json_string_value(json_object_get(root, "message")));
    if (code == 200) {
        const char *s =
            json_string_value(json_object_get(json_object_get(root, "data"), "deviceSecret"));
        if (!s || !*s || strlen(s) >= sizeof(out->device_secret))
            goto out;
        copy_str(out->device_secret, sizeof(out->device_secret), s);
        rc = 0;
    } else if (code == 6289) {
        rc = ALIGW_EACTIVE;
    } else if (code == 6600) {
        rc = ALIGW_EAUTH;
    } else {
        rc = ALIGW_EREFUSED;
    }
out:
    json_decref(root);
    return rc;
}

int dynreg_parse_mqtt_reply(const char *topic, const char *payload, size_t len,
                            struct dynreg_result *out)
{
    json_error_t e;
    json_t *root = json_loadb(payload, len, 0, &e);
    int rc = ALIGW_EPROTO;

    memset(out, 0, sizeof(*out));
    if (!json_is_object(root))
        goto out;
    if (strcmp(topic, "/ext/register") == 0) {
        const char *s = json_string_value(json_object_get(root, "deviceSecret"));
        if (s && *s && strlen(s) < sizeof(out->device_secret)) {
            copy_str(out->device_secret, sizeof(out->device_secret), s);
            rc = 0;
        }
    } else if (strcmp(topic, "/ext/regnwl") == 0) {
        const char *cid = json_string_value(json_object_get(root, "clientId"));
        const char *tok = json_string_value(json_object_get(root, "deviceToken"));
        if (cid && *cid && tok && *tok && strlen(cid) < sizeof(out->client_id) &&
            strlen(tok) < sizeof(out->device_token)) {
            copy_str(out->client_id, sizeof(out->client_id), cid);
            copy_str(out->device_token, sizeof(out->device_token), tok);
            rc = 0;
        }
    }
out:
    json_decref(root);
    return rc;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct https_job *j = userdata;
    size_t n = size * nmemb;
    if (j->body_len + n >= sizeof(j->body))
        return 0; /* a registration reply is small; anything larger is refused */
    memcpy(j->body + j->body_len, ptr, n);
    j->body_len += n;
    j->body[j->body_len] = '\0';
    return n;
}

static void https_work(uv_work_t *w)
{
    struct https_job *j = w->data;
    CURL *c = C.easy_init();
    struct curl_slist *hdr = NULL;
    CURLcode cc;
    long http = 0;

    if (!c) {
        j->status = -ENOMEM;
        return;
    }
    hdr = C.slist_append(hdr, "Accept: text/xml,text/javascript,text/html,application/json");
    C.easy_setopt(c, CURLOPT_URL, j->url);
    C.easy_setopt(c, CURLOPT_POSTFIELDS, j->form);
    C.easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    C.easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    C.easy_setopt(c, CURLOPT_WRITEDATA, j);
    C.easy_setopt(c, CURLOPT_ERRORBUFFER, j->curl_error);
    C.easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    C.easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    C.easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    C.easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    if (j->ca_file)
        C.easy_setopt(c, CURLOPT_CAINFO, j->ca_file);
    C.easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    C.easy_setopt(c, CURLOPT_SSL_VERIFYHOST, j->verify ? 2L : 0L);
    cc = C.easy_perform(c);
    if (cc == CURLE_OK) {
        C.easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
        j->status = 0;
    } else {
        j->status = cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
    }
    C.slist_free_all(hdr);
    C.easy_cleanup(c);
}

static void job_free(struct https_job *j)
{
    if (j->form) {
        memset(j->form, 0, strlen(j->form));
        free(j->form);
    }
    free(j->url);
    free(j->ca_file);
    memset(j->body, 0, sizeof(j->body));
    free(j);
}

static void https_done(uv_work_t *w, int status)
{
    struct https_job *j = w->data;
    struct dynreg_result r;
    int rc = j->status;

    memset(&r, 0, sizeof(r));
    if (status < 0)
        rc = status;
    else if (rc == 0)
        rc = dynreg_parse_https_reply(j->body, &r);
    else
        copy_str(r.message, sizeof(r.message), j->curl_error);
    j->cb(j->arg, rc, &r);
    memset(&r, 0, sizeof(r));
    job_free(j);
}

int dynreg_https_start(uv_loop_t *loop, const struct dynreg_request *req, dynreg_cb cb, void *arg)
{
    static uv_once_t once = UV_ONCE_INIT;
    char random[17], sign[SIGN_HEX_MAX];
    struct https_job *j;
    int rc;

    uv_once(&once, curl_load_once);
    if (!C.lib) {
        log_error("HTTPS registration needs libcurl (Debian package libcurl4): %s", C.error);
        return -ENOSYS;
    }
    dynreg_random(random);
    rc = sign_register(req->method, req->product_secret, req->product_key, req->device_name, random,
                       sign);
    if (rc < 0)
        return rc;
    j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    j->cb = cb;
    j->arg = arg;
    j->verify = req->verify_hostname;
    j->url = strdup(req->url);
    j->ca_file = req->ca_file ? strdup(req->ca_file) : NULL;
    if (asprintf(&j->form, "productKey=%s&deviceName=%s&random=%s&sign=%s&signMethod=%s",
                 req->product_key, req->device_name, random, sign,
                 sign_method_name(req->method)) < 0)
        j->form = NULL;
    if (!j->url || !j->form || (req->ca_file && !j->ca_file)) {
        job_free(j);
        return -ENOMEM;
    }
    j->work.data = j;
    rc = uv_queue_work(loop, &j->work, https_work, https_done);
    if (rc < 0)
        job_free(j);
    return rc;
}
