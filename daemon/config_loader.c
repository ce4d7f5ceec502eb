/*
 * config_loader: reporting, small helpers, typed JSON readers and the key-table walk shared by
 * the configuration parsers (see config_loader.h).
 */
#include "config_loader.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonpos.h"

/* ---- error lists ---------------------------------------------------------------------------- */

/* Appends x, whose text it takes over (freed when there is no room). */
static void elist_push(struct loader *L, struct elist *e, struct ent x)
{
    if (e->n == e->cap) {
        size_t ncap = e->cap ? e->cap * 2 : 16;
        struct ent *nv = realloc(e->v, ncap * sizeof(*nv));
        if (!nv) {
            free(x.text);
            L->oom = true;
            return;
        }
        e->v = nv;
        e->cap = ncap;
    }
    e->v[e->n++] = x;
}

void cfg_vreport(struct loader *L, struct elist *e, int src, int line, int col, const char *key,
                 const char *fmt, va_list ap) __attribute__((format(printf, 7, 0)));

void cfg_vreport(struct loader *L, struct elist *e, int src, int line, int col, const char *key,
                 const char *fmt, va_list ap)
{
    if (e->n >= CONFIG_MAX_ERRORS) {
        e->more++;
        return;
    }
    char *reason = NULL, *text = NULL;
    if (vasprintf(&reason, fmt, ap) < 0) {
        L->oom = true;
        return;
    }
    const char *file = src == SRC_DEVICES ? L->dev_display : L->name;
    int r;
    if (!file)
        r = asprintf(&text, "%s: %s", key, reason);
    else if (line > 0)
        r = asprintf(&text, "%s:%d:%d: %s: %s", file, line, col, key, reason);
    else
        r = asprintf(&text, "%s: %s: %s", file, key, reason);
    free(reason);
    if (r < 0) {
        L->oom = true;
        return;
    }
    elist_push(L, e, (struct ent){src, line, col, L->seq++, text});
}

void cfg_report(struct loader *L, int src, int line, int col, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void cfg_report(struct loader *L, int src, int line, int col, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfg_vreport(L, &L->errs, src, line, col, key, fmt, ap);
    va_end(ap);
}

void cfg_warn(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cfg_warn(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) < 0)
        L->oom = true;
    va_end(ap);
    if (!text)
        return;
    elist_push(L, &L->warns, (struct ent){0, 0, 0, L->seq++, text});
}

static int ent_cmp(const void *a, const void *b)
{
    const struct ent *x = a, *y = b;
    if (x->src != y->src)
        return x->src < y->src ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Moves an internal list into the caller's struct config_errors (appending). */
void cfg_elist_export(struct loader *L, struct elist *e, struct config_errors *out, bool sort)
{
    if (sort && e->n > 1)
        qsort(e->v, e->n, sizeof(*e->v), ent_cmp);
    char *more = NULL;
    if (e->more && asprintf(&more, "... and %zu more errors", e->more) < 0)
        more = NULL;
    size_t add = e->n + (more ? 1 : 0);
    if (out && add) {
        struct config_error *nv = realloc(out->v, (out->n + add) * sizeof(*nv));
        if (nv) {
            out->v = nv;
            for (size_t i = 0; i < e->n; i++) {
                out->v[out->n++].text = e->v[i].text;
                e->v[i].text = NULL;
            }
            if (more) {
                out->v[out->n++].text = more;
                out->more += e->more;
                more = NULL;
            }
        } else {
            L->oom = true;
        }
    }
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i].text);
    free(more);
    free(e->v);
    *e = (struct elist){0};
}

void config_errors_free(struct config_errors *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i].text);
    free(e->v);
    e->v = NULL;
    e->n = 0;
    e->more = 0;
}

/* ---- small helpers -------------------------------------------------------------------------- */

char *cfg_ldup(struct loader *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        L->oom = true;
    return d;
}

char *cfg_lfmt(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *cfg_lfmt(struct loader *L, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0) {
        s = NULL;
        L->oom = true;
    }
    va_end(ap);
    return s;
}

/* A path from the config: absolute as is, relative to the config file's directory otherwise. */
char *cfg_resolve_path(struct loader *L, const char *p)
{
    if (p[0] == '/' || !L->dir)
        return cfg_ldup(L, p);
    return cfg_lfmt(L, "%s/%s", L->dir, p);
}

/* Reads a regular file (never a FIFO or device, which could block or never end). */
int cfg_read_file(const char *path, char **out, size_t *len, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -errno;
    int r = 0;
    char *buf = NULL;
    size_t n = 0;
    if (fstat(fd, st) < 0) {
        r = -errno;
        goto out;
    }
    if (!S_ISREG(st->st_mode)) {
        r = S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
        goto out;
    }
    if ((size_t)st->st_size > CONFIG_MAX_FILE) {
        r = -EFBIG;
        goto out;
    }
    size_t cap = (size_t)st->st_size + 2;
    buf = malloc(cap);
    if (!buf) {
        r = -ENOMEM;
        goto out;
    }
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > CONFIG_MAX_FILE) {
                r = -EFBIG;
                goto out;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                r = -ENOMEM;
                goto out;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            goto out;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    buf[n] = '\0';
out:
    close(fd);
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *len = n;
    return 0;
}

const char *cfg_file_error(int r)
{
    switch (r) {
    case -EINVAL:
        return "not a regular file";
    case -EFBIG:
        return "file too large";
    default:
        return strerror(-r);
    }
}

bool cfg_chars_ok(const char *s, const char *extra)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
            continue;
        if (!strchr(extra, ch))
            return false;
    }
    return true;
}

/* NULL if s uses only the ${productKey} and ${deviceName} placeholders, else the reason. */
const char *cfg_placeholder_problem(const char *s)
{
    for (const char *p = strstr(s, "${"); p; p = strstr(p, "${")) {
        const char *e = strchr(p, '}');
        if (!e)
            return "unterminated ${ placeholder";
        size_t n = (size_t)(e - p - 2);
        if (!((n == 10 && strncmp(p + 2, "productKey", 10) == 0) ||
              (n == 10 && strncmp(p + 2, "deviceName", 10) == 0)))
            return "unknown placeholder (only ${productKey} and ${deviceName})";
        p = e + 1;
    }
    return NULL;
}

char *cfg_expand(struct loader *L, const char *s, const char *pk, const char *dn)
{
    size_t pkl = strlen(pk), dnl = strlen(dn), cap = strlen(s) + 1, n = 0;
    for (const char *p = strstr(s, "${"); p; p = strstr(p + 2, "${"))
        cap += pkl > dnl ? pkl : dnl;
    char *out = malloc(cap);
    if (!out) {
        L->oom = true;
        return NULL;
    }
    while (*s) {
        if (strncmp(s, "${productKey}", 13) == 0) {
            memcpy(out + n, pk, pkl);
            n += pkl;
            s += 13;
        } else if (strncmp(s, "${deviceName}", 13) == 0) {
            memcpy(out + n, dn, dnl);
            n += dnl;
            s += 13;
        } else {
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    return out;
}

/* ---- positions in the JSON text ------------------------------------------------------------- */

/* Cuts the last component off a path: "a.b[2]" → "a.b" → "a" → "". */
static void path_parent(char *p)
{
    size_t n = strlen(p);
    if (n && p[n - 1] == ']') {
        char *b = strrchr(p, '[');
        if (b) {
            *b = '\0';
            return;
        }
    }
    char *d = strrchr(p, '.');
    if (d)
        *d = '\0';
    else
        p[0] = '\0';
}

void cfg_json_pos(struct loader *L, const char *path, bool at_key, int *line, int *col)
{
    *line = *col = 0;
    if (!L->jp)
        return;
    char *p = strdup(path);
    if (!p)
        return;
    for (;;) {
        struct jsonpos_at at;
        if (jsonpos_find(L->jp, p, &at) == 0) {
            *line = at_key ? at.key_line : at.val_line;
            *col = at_key ? at.key_col : at.val_col;
            break;
        }
        if (!p[0])
            break;
        path_parent(p);
        at_key = false; /* a missing member is reported at its parent's value */
    }
    free(p);
}

void cfg_vjerr(struct loader *L, const char *path, bool at_key, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
void cfg_vjerr(struct loader *L, const char *path, bool at_key, const char *fmt, va_list ap)
{
    int line, col;
    cfg_json_pos(L, path, at_key, &line, &col);
    /* Without a file (an API object) a key is named bare, even the empty one. */
    cfg_vreport(L, &L->errs, SRC_CONFIG, line, col, path[0] || !L->name ? path : "(root)", fmt, ap);
}

void cfg_jerr(struct loader *L, const char *path, bool at_key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cfg_jerr(struct loader *L, const char *path, bool at_key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfg_vjerr(L, path, at_key, fmt, ap);
    va_end(ap);
}

char *cfg_jpath(struct loader *L, const char *base, const char *key)
{
    return base[0] ? cfg_lfmt(L, "%s.%s", base, key) : cfg_ldup(L, key);
}

const char *cfg_json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* Typed getters: report at path and return false on a wrong type or range. */
bool cfg_j_str(struct loader *L, json_t *v, const char *path, const char **out)
{
    if (!json_is_string(v)) {
        cfg_jerr(L, path, false, "must be a string, got %s", cfg_json_type_name(v));
        return false;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        cfg_jerr(L, path, false, "must not contain NUL characters");
        return false;
    }
    *out = json_string_value(v);
    return true;
}

bool cfg_j_nonempty(struct loader *L, json_t *v, const char *path, const char **out)
{
    if (!cfg_j_str(L, v, path, out))
        return false;
    if (!**out) {
        cfg_jerr(L, path, false, "must not be empty");
        return false;
    }
    return true;
}

static bool j_int(struct loader *L, json_t *v, const char *path, long long min, long long max,
                  long long *out)
{
    if (json_is_real(v)) {
        cfg_jerr(L, path, false, "must be an integer, got %g", json_real_value(v));
        return false;
    }
    if (!json_is_integer(v)) {
        cfg_jerr(L, path, false, "must be an integer, got %s", cfg_json_type_name(v));
        return false;
    }
    long long x = json_integer_value(v);
    if (x < min || x > max) {
        cfg_jerr(L, path, false, "must be between %lld and %lld, got %lld", min, max, x);
        return false;
    }
    *out = x;
    return true;
}

static bool j_num(struct loader *L, json_t *v, const char *path, double min, double max,
                  double *out)
{
    if (!json_is_number(v)) {
        cfg_jerr(L, path, false, "must be a number, got %s", cfg_json_type_name(v));
        return false;
    }
    double x = json_number_value(v);
    if (!(x >= min && x <= max)) {
        cfg_jerr(L, path, false, "must be between %g and %g, got %g", min, max, x);
        return false;
    }
    *out = x;
    return true;
}

void cfg_free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* An array of account names (users or groups). */
static void j_names(struct loader *L, json_t *v, const char *path, char ***out, size_t *n)
{
    if (!json_is_array(v)) {
        cfg_jerr(L, path, false, "must be an array of names, got %s", cfg_json_type_name(v));
        return;
    }
    size_t cnt = json_array_size(v);
    char **arr = calloc(cnt ? cnt : 1, sizeof(*arr));
    if (!arr) {
        L->oom = true;
        return;
    }
    size_t k = 0, i;
    json_t *el;
    json_array_foreach(v, i, el)
    {
        char *p = cfg_lfmt(L, "%s[%zu]", path, i);
        const char *s;
        if (p && cfg_j_nonempty(L, el, p, &s)) {
            if (strlen(s) > 64 || !cfg_chars_ok(s, "_.-$"))
                cfg_jerr(L, p, false, "not a valid user or group name");
            else
                arr[k++] = cfg_ldup(L, s);
        }
        free(p);
    }
    cfg_free_strv(*out, *n);
    *out = arr;
    *n = k;
}

bool cfg_valid_name(const char *s)
{
    return *s && strlen(s) <= 64 && cfg_chars_ok(s, "_.-$");
}

bool cfg_j_object(struct loader *L, json_t *v, const char *path)
{
    if (json_is_object(v))
        return true;
    cfg_jerr(L, path, false, "must be an object, got %s", cfg_json_type_name(v));
    return false;
}

/* ---- choices: a string that must be one of a few names -------------------------------------- */

bool cfg_choice_find(const struct choice *c, const char *s, int *out)
{
    for (; c->name; c++) {
        if (strcmp(c->name, s) == 0) {
            *out = c->value;
            return true;
        }
    }
    return false;
}

/* The names for a message: "\"a\"", "\"a\" or \"b\"", "\"a\", \"b\" or \"c\"". */
void cfg_choice_names(const struct choice *c, char *buf, size_t len)
{
    size_t n = 0, used = 0;
    while (c[n].name)
        n++;
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int w = snprintf(buf + used, len - used, "%s\"%s\"", sep, c[i].name);
        if (w < 0 || (size_t)w >= len - used)
            break;
        used += (size_t)w;
    }
}

static bool j_choice(struct loader *L, json_t *v, const char *path, const struct choice *choices,
                     int *out)
{
    const char *str;
    char names[256];
    if (!cfg_j_str(L, v, path, &str))
        return false;
    if (cfg_choice_find(choices, str, out))
        return true;
    cfg_choice_names(choices, names, sizeof(names));
    cfg_jerr(L, path, false, "must be %s, got \"%s\"", names, str);
    return false;
}

/* ---- walking an object through a table of its keys ------------------------------------------ */

static void store_int(void *dst, size_t size, long long x)
{
    if (size == sizeof(int)) {
        int i = (int)x;
        memcpy(dst, &i, size);
    } else {
        int64_t i = x;
        memcpy(dst, &i, size);
    }
}

static void set_owned(char **dst, char *v)
{
    if (v) {
        free(*dst);
        *dst = v;
    }
}

static void key_read(struct loader *L, const struct key *e, json_t *v, const char *p, void *ctx)
{
    char *field = (char *)L->c + e->off;
    const char *str;
    long long x;
    double d;
    int ch;
    switch (e->kind) {
    case K_SKIP:
        break;
    case K_STR:
        if (!cfg_j_nonempty(L, v, p, &str))
            break;
        if (e->ok && !e->ok(str)) {
            if (e->quote)
                cfg_jerr(L, p, false, "%s: \"%s\"", e->why, str);
            else
                cfg_jerr(L, p, false, "%s", e->why);
        } else {
            set_owned((char **)field, cfg_ldup(L, str));
        }
        break;
    case K_PATH:
        if (cfg_j_nonempty(L, v, p, &str))
            set_owned((char **)field, cfg_resolve_path(L, str));
        break;
    case K_INT:
        if (j_int(L, v, p, e->lo, e->hi, &x))
            store_int(field, e->size, x);
        break;
    case K_NUM:
        if (j_num(L, v, p, e->dlo, e->dhi, &d))
            memcpy(field, &d, sizeof(d));
        break;
    case K_CHOICE:
        if (j_choice(L, v, p, e->choices, &ch))
            store_int(field, e->size, ch);
        break;
    case K_NAMES:
        j_names(L, v, p, (char ***)field, (size_t *)((char *)L->c + e->off2));
        break;
    case K_FN:
        e->fn(L, ctx, v, p);
        break;
    }
}

/*
 * Reads the members of object o (at path base): "_comment" is skipped, a key of the table keys
 * (may be NULL) is read by its kind, any other goes to other (may be NULL), and one that is none
 * of these is reported as an unknown key. Returns false when some key was unknown.
 */
bool cfg_walk(struct loader *L, json_t *o, const char *base, const struct key *keys, other_fn other,
              void *ctx)
{
    const char *k;
    json_t *v;
    bool known = true;
    json_object_foreach(o, k, v)
    {
        if (strcmp(k, "_comment") == 0)
            continue;
        char *p = cfg_jpath(L, base, k);
        if (!p)
            continue;
        const struct key *e = keys;
        while (e && e->name && strcmp(e->name, k) != 0)
            e++;
        if (e && e->name) {
            key_read(L, e, v, p, ctx);
        } else if (!other || !other(L, ctx, k, v, p)) {
            cfg_jerr(L, p, true, "unknown key");
            known = false;
        }
        free(p);
    }
    return known;
}

bool cfg_j_int(struct loader *L, json_t *v, const char *path, long long min, long long max,
               long long *out)
{
    return j_int(L, v, path, min, max, out);
}

bool cfg_j_choice(struct loader *L, json_t *v, const char *path, const struct choice *choices,
                  int *out)
{
    return j_choice(L, v, path, choices, out);
}
