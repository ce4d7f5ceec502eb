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
    CURL *c = curl_easy_init();
    struct curl_slist *hdr = NULL;
    CURLcode cc;
    long http = 0;

    if (!c) {
        j->status = -ENOMEM;
        return;
    }
    hdr = curl_slist_append(hdr, "Accept: text/xml,text/javascript,text/html,application/json");
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->form);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, j->curl_error);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    if (j->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, j->ca_file);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, j->verify ? 2L : 0L);
    cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
        j->status = 0;
    } else {
        j->status = cc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
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

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int dynreg_https_start(uv_loop_t *loop, const struct dynreg_request *req, dynreg_cb cb, void *arg)
{
    static uv_once_t once = UV_ONCE_INIT;
    char random[17], sign[SIGN_HEX_MAX];
    struct https_job *j;
    int rc;

    uv_once(&once, curl_init_once);
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
