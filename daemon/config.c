/*
 * config: loads aligw.json and the devices file into a fresh struct config (see config.h).
 *
 * The shape: jansson parses the text (syntax errors carry jansson's own position), jsonpos
 * indexes the same text so every semantic error can name the line and column of the key or
 * value at fault, and one walk over the JSON tree checks every key against what the section
 * allows. Nothing stops at the first problem: each error is collected with its position, the
 * list is sorted by file and position at the end, and a config with any error is freed whole.
 *
 * Devices come from three places that share one validator: the inline "devices" array, the CSV
 * devices file (the format the local hub reads too, see docs/configuration.md) and the API's
 * runtime add (config_device_from_json). A device is parsed into a dev_build (the values it
 * sets, with a bit per field) and then resolved against the "cloud" defaults, so consumers see
 * final values only. A field error names the field the way its source does: "devices[3].port"
 * in JSON, the column name in CSV. Secrets are never part of a message.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jsonpos.h"
#include "log.h"

#ifndef ALIGW_DATA_DIR
#error "ALIGW_DATA_DIR must be defined by the build"
#endif
#ifndef ALIGW_PLUGIN_DIR
#error "ALIGW_PLUGIN_DIR must be defined by the build"
#endif

#define CONFIG_MAX_ERRORS 1000
#define CONFIG_MAX_FILE ((size_t)512 << 20)
#define DEFAULT_CA_FILE ALIGW_DATA_DIR "/aliyun-ca-bundle.pem"

enum { SRC_CONFIG = 0, SRC_DEVICES = 1 };

/* ---- error lists ---------------------------------------------------------------------------- */

struct ent {
    int src, line, col;
    size_t seq;
    char *text;
};

struct elist {
    struct ent *v;
    size_t n, cap;
    size_t more; /* dropped after CONFIG_MAX_ERRORS */
};

struct origin {
    int src, line, col;
};

struct islot {
    uint32_t hash;
    size_t idx1; /* device index + 1; 0 = empty */
};

struct config_index {
    struct islot *slots;
    size_t cap, n;
};

struct loader {
    const char *name; /* config file as named in messages; NULL for API objects */
    char *dir;        /* absolute directory that relative paths are resolved against */
    const char *text;
    size_t len;
    struct jsonpos *jp;
    char *dev_display; /* devices file as named in messages */
    struct elist errs, warns;
    size_t seq;
    bool oom;
    struct config *c;
    size_t dev_cap;
    struct origin *orig;
    int *owner; /* per device: index of the plugin that lists it, or -1 */
    bool secrets_inline, secrets_file;
};

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

static void vreport(struct loader *L, struct elist *e, int src, int line, int col, const char *key,
                    const char *fmt, va_list ap) __attribute__((format(printf, 7, 0)));

static void vreport(struct loader *L, struct elist *e, int src, int line, int col, const char *key,
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

static void report(struct loader *L, int src, int line, int col, const char *key, const char *fmt,
                   ...) __attribute__((format(printf, 6, 7)));
static void report(struct loader *L, int src, int line, int col, const char *key, const char *fmt,
                   ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(L, &L->errs, src, line, col, key, fmt, ap);
    va_end(ap);
}

static void warn(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(struct loader *L, const char *fmt, ...)
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
static void elist_export(struct loader *L, struct elist *e, struct config_errors *out, bool sort)
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
}

/* ---- small helpers -------------------------------------------------------------------------- */

static char *ldup(struct loader *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        L->oom = true;
    return d;
}

static char *lfmt(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *lfmt(struct loader *L, const char *fmt, ...)
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
static char *resolve_path(struct loader *L, const char *p)
{
    if (p[0] == '/' || !L->dir)
        return ldup(L, p);
    return lfmt(L, "%s/%s", L->dir, p);
}

/* Reads a regular file (never a FIFO or device, which could block or never end). */
static int read_file(const char *path, char **out, size_t *len, struct stat *st)
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

static const char *file_error(int r)
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

static bool chars_ok(const char *s, const char *extra)
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
static const char *placeholder_problem(const char *s)
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

static char *expand(struct loader *L, const char *s, const char *pk, const char *dn)
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

static void json_pos(struct loader *L, const char *path, bool at_key, int *line, int *col)
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

static void vjerr(struct loader *L, const char *path, bool at_key, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static void vjerr(struct loader *L, const char *path, bool at_key, const char *fmt, va_list ap)
{
    int line, col;
    json_pos(L, path, at_key, &line, &col);
    /* Without a file (an API object) a key is named bare, even the empty one. */
    vreport(L, &L->errs, SRC_CONFIG, line, col, path[0] || !L->name ? path : "(root)", fmt, ap);
}

static void jerr(struct loader *L, const char *path, bool at_key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void jerr(struct loader *L, const char *path, bool at_key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vjerr(L, path, at_key, fmt, ap);
    va_end(ap);
}

static char *jpath(struct loader *L, const char *base, const char *key)
{
    return base[0] ? lfmt(L, "%s.%s", base, key) : ldup(L, key);
}

static const char *json_type_name(const json_t *v)
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
static bool j_str(struct loader *L, json_t *v, const char *path, const char **out)
{
    if (!json_is_string(v)) {
        jerr(L, path, false, "must be a string, got %s", json_type_name(v));
        return false;
    }
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        jerr(L, path, false, "must not contain NUL characters");
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool j_nonempty(struct loader *L, json_t *v, const char *path, const char **out)
{
    if (!j_str(L, v, path, out))
        return false;
    if (!**out) {
        jerr(L, path, false, "must not be empty");
        return false;
    }
    return true;
}

static bool j_int(struct loader *L, json_t *v, const char *path, long long min, long long max,
                  long long *out)
{
    if (json_is_real(v)) {
        jerr(L, path, false, "must be an integer, got %g", json_real_value(v));
        return false;
    }
    if (!json_is_integer(v)) {
        jerr(L, path, false, "must be an integer, got %s", json_type_name(v));
        return false;
    }
    long long x = json_integer_value(v);
    if (x < min || x > max) {
        jerr(L, path, false, "must be between %lld and %lld, got %lld", min, max, x);
        return false;
    }
    *out = x;
    return true;
}

static bool j_num(struct loader *L, json_t *v, const char *path, double min, double max,
                  double *out)
{
    if (!json_is_number(v)) {
        jerr(L, path, false, "must be a number, got %s", json_type_name(v));
        return false;
    }
    double x = json_number_value(v);
    if (!(x >= min && x <= max)) {
        jerr(L, path, false, "must be between %g and %g, got %g", min, max, x);
        return false;
    }
    *out = x;
    return true;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* An array of account names (users or groups). */
static void j_names(struct loader *L, json_t *v, const char *path, char ***out, size_t *n)
{
    if (!json_is_array(v)) {
        jerr(L, path, false, "must be an array of names, got %s", json_type_name(v));
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
        char *p = lfmt(L, "%s[%zu]", path, i);
        const char *s;
        if (p && j_nonempty(L, el, p, &s)) {
            if (strlen(s) > 64 || !chars_ok(s, "_.-$"))
                jerr(L, p, false, "not a valid user or group name");
            else
                arr[k++] = ldup(L, s);
        }
        free(p);
    }
    free_strv(*out, *n);
    *out = arr;
    *n = k;
}

static bool valid_name_char_list(const char *s)
{
    return *s && strlen(s) <= 64 && chars_ok(s, "_.-$");
}

static bool j_object(struct loader *L, json_t *v, const char *path)
{
    if (json_is_object(v))
        return true;
    jerr(L, path, false, "must be an object, got %s", json_type_name(v));
    return false;
}

/* ---- choices: a string that must be one of a few names -------------------------------------- */

struct choice {
    const char *name; /* NULL ends a list */
    int value;
};

static bool choice_find(const struct choice *c, const char *s, int *out)
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
static void choice_names(const struct choice *c, char *buf, size_t len)
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
    if (!j_str(L, v, path, &str))
        return false;
    if (choice_find(choices, str, out))
        return true;
    choice_names(choices, names, sizeof(names));
    jerr(L, path, false, "must be %s, got \"%s\"", names, str);
    return false;
}

static const struct choice durability_choices[] = {
    {"normal", DURABILITY_NORMAL},
    {"full", DURABILITY_FULL},
    {NULL, 0},
};
static const struct choice policy_choices[] = {
    {"drop-oldest", STORE_DROP_OLDEST},
    {"reject-new", STORE_REJECT_NEW},
    {NULL, 0},
};
static const struct choice register_choices[] = {
    {"https", REG_HTTPS},
    {"mqtt", REG_MQTT},
    {"mqtt-nwl", REG_MQTT_NWL},
    {NULL, 0},
};

/* ---- walking an object through a table of its keys ------------------------------------------ */

enum kind {
    K_SKIP,   /* read elsewhere (in another order) */
    K_STR,    /* a non-empty string, checked by ok() when given */
    K_PATH,   /* a non-empty string: a path, resolved against the config's directory */
    K_INT,    /* an integer in [lo, hi], stored in a field of any integer or enum type */
    K_NUM,    /* a number in [dlo, dhi] */
    K_CHOICE, /* one of choices, stored like K_INT */
    K_NAMES,  /* an array of user or group names; the count goes to the field at off2 */
    K_FN,     /* fn() reads it */
};

/*
 * One key a section allows. Fields live in struct config at off (size bytes); keys whose value
 * goes elsewhere use fn, which gets the walk's ctx.
 */
struct key {
    const char *name; /* NULL ends a table */
    enum kind kind;
    size_t off, size, off2;
    long long lo, hi;
    double dlo, dhi;
    bool (*ok)(const char *s);
    const char *why; /* K_STR: the reason when ok() refuses */
    bool quote;      /* K_STR: the reason is followed by the value */
    const struct choice *choices;
    void (*fn)(struct loader *L, void *ctx, json_t *v, const char *path);
};

#define CF(f) .off = offsetof(struct config, f), .size = sizeof(((struct config *)0)->f)

/* A key the table does not list; returns false when it is not one either. */
typedef bool (*other_fn)(struct loader *L, void *ctx, const char *k, json_t *v, const char *path);

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
        if (!j_nonempty(L, v, p, &str))
            break;
        if (e->ok && !e->ok(str)) {
            if (e->quote)
                jerr(L, p, false, "%s: \"%s\"", e->why, str);
            else
                jerr(L, p, false, "%s", e->why);
        } else {
            set_owned((char **)field, ldup(L, str));
        }
        break;
    case K_PATH:
        if (j_nonempty(L, v, p, &str))
            set_owned((char **)field, resolve_path(L, str));
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
static bool walk(struct loader *L, json_t *o, const char *base, const struct key *keys,
                 other_fn other, void *ctx)
{
    const char *k;
    json_t *v;
    bool known = true;
    json_object_foreach(o, k, v)
    {
        if (strcmp(k, "_comment") == 0)
            continue;
        char *p = jpath(L, base, k);
        if (!p)
            continue;
        const struct key *e = keys;
        while (e && e->name && strcmp(e->name, k) != 0)
            e++;
        if (e && e->name) {
            key_read(L, e, v, p, ctx);
        } else if (!other || !other(L, ctx, k, v, p)) {
            jerr(L, p, true, "unknown key");
            known = false;
        }
        free(p);
    }
    return known;
}

/* ---- devices -------------------------------------------------------------------------------- */

enum dfield {
    DF_PK,
    DF_DN,
    DF_SECRET,
    DF_PSECRET,
    DF_REGISTER,
    DF_CLIENT_ID,
    DF_HOST,
    DF_PORT,
    DF_TLS,
    DF_CA,
    DF_VERIFY,
    DF_SECUREMODE,
    DF_SIGN,
    DF_TS,
    DF_KEEPALIVE,
    DF_CLEAN,
    DF_RECONNECT,
    DF_TOPICS,
    DF_RATE,
    DF_MAXBYTES,
    DF__N
};

static const char *const dfield_name[DF__N] = {
    "product_key",
    "device_name",
    "device_secret",
    "product_secret",
    "register",
    "client_id",
    "host",
    "port",
    "tls",
    "ca_file",
    "verify_hostname",
    "securemode",
    "sign_method",
    "timestamp",
    "keepalive",
    "clean_session",
    "auto_reconnect",
    "topics",
    "rate",
    "max_bytes",
};

#define BIT(f) (1u << (f))
/* Reports a device field error and leaves the calling setter. */
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        dev_err(__VA_ARGS__);                                                                      \
        return;                                                                                    \
    } while (0)
/* Keys "cloud" may set for every device. */
#define MASK_CLOUD                                                                                 \
    (BIT(DF_HOST) | BIT(DF_PORT) | BIT(DF_TLS) | BIT(DF_CA) | BIT(DF_VERIFY) |                     \
     BIT(DF_SECUREMODE) | BIT(DF_SIGN) | BIT(DF_TS) | BIT(DF_KEEPALIVE) | BIT(DF_CLEAN) |          \
     BIT(DF_RECONNECT))
#define MASK_DEVICE (BIT(DF__N) - 1)
/* Columns of the devices file (the format shared with the local hub). */
#define MASK_CSV                                                                                   \
    (BIT(DF_PK) | BIT(DF_DN) | BIT(DF_SECRET) | BIT(DF_PSECRET) | BIT(DF_REGISTER) |               \
     BIT(DF_CLIENT_ID) | BIT(DF_KEEPALIVE) | BIT(DF_RATE) | BIT(DF_HOST) | BIT(DF_PORT) |          \
     BIT(DF_TLS) | BIT(DF_TOPICS))

static int dfield_lookup(const char *k)
{
    for (int f = 0; f < DF__N; f++)
        if (strcmp(dfield_name[f], k) == 0)
            return f;
    return -1;
}

struct dev_build {
    struct device_conf d;
    unsigned set; /* BIT(field) for each field the source gave */
    size_t topics_cap;
};

/* Where a device's fields came from, to name them in errors. */
struct dsrc {
    struct loader *L;
    const char *path; /* JSON: the device object's path ("devices[3]", "cloud", ""); NULL: CSV */
    int line;         /* CSV: the row's first line */
    int fline[DF__N], fcol[DF__N];
    bool bad;         /* any error in this device */
    unsigned errbits; /* BIT(field) for each field already reported */
};

static void dev_err(struct dsrc *s, int f, long idx, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void dev_err(struct dsrc *s, int f, long idx, const char *fmt, ...)
{
    va_list ap;
    s->bad = true;
    s->errbits |= BIT(f);
    va_start(ap, fmt);
    if (s->path) {
        char *p = idx >= 0 ? lfmt(s->L, "%s%s%s[%ld]", s->path, s->path[0] ? "." : "",
                                  dfield_name[f], idx)
                           : jpath(s->L, s->path, dfield_name[f]);
        if (p)
            vjerr(s->L, p, false, fmt, ap);
        free(p);
    } else {
        bool have = s->fline[f] > 0;
        vreport(s->L, &s->L->errs, SRC_DEVICES, have ? s->fline[f] : s->line, have ? s->fcol[f] : 1,
                dfield_name[f], fmt, ap);
    }
    va_end(ap);
}

static char **str_field(struct device_conf *d, int f)
{
    switch (f) {
    case DF_PK:
        return &d->product_key;
    case DF_DN:
        return &d->device_name;
    case DF_SECRET:
        return &d->device_secret;
    case DF_PSECRET:
        return &d->product_secret;
    case DF_CLIENT_ID:
        return &d->client_id;
    case DF_HOST:
        return &d->host;
    case DF_CA:
        return &d->ca_file;
    default:
        return NULL;
    }
}

static void set_str(struct dsrc *s, struct dev_build *b, int f, const char *v)
{
    size_t n = strlen(v);
    switch (f) {
    case DF_PK:
        if (n < 1 || n > 32)
            FAIL(s, f, -1, "must be 1 to 32 characters, got %zu", n);
        if (!chars_ok(v, "_-"))
            FAIL(s, f, -1, "may contain only letters, digits, '_' and '-'");
        break;
    case DF_DN:
        if (n < 4 || n > 32)
            FAIL(s, f, -1, "must be 4 to 32 characters, got %zu", n);
        if (!chars_ok(v, "_-.@:"))
            FAIL(s, f, -1, "may contain only letters, digits and the characters _ - . @ :");
        break;
    case DF_SECRET:
    case DF_PSECRET:
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        if (n > 64)
            FAIL(s, f, -1, "too long (%zu characters, at most 64)", n);
        break;
    case DF_CLIENT_ID: {
        const char *why = placeholder_problem(v);
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        if (strchr(v, '|'))
            FAIL(s, f, -1, "must not contain '|'");
        if (why)
            FAIL(s, f, -1, "%s", why);
        break;
    }
    case DF_HOST:
        if (n < 1 || n > 253)
            FAIL(s, f, -1, "must be 1 to 253 characters, got %zu", n);
        if (!chars_ok(v, ".-_:[]"))
            FAIL(s, f, -1, "not a host name or address: \"%s\"", v);
        break;
    case DF_CA:
        if (n < 1)
            FAIL(s, f, -1, "must not be empty");
        break;
    default:
        return;
    }
    char **dst = str_field(&b->d, f);
    free(*dst);
    *dst = f == DF_CA ? resolve_path(s->L, v) : ldup(s->L, v);
    b->set |= BIT(f);
}

static void set_int(struct dsrc *s, struct dev_build *b, int f, long long v)
{
    switch (f) {
    case DF_PORT:
        if (v < 1 || v > 65535)
            FAIL(s, f, -1, "must be between 1 and 65535, got %lld", v);
        b->d.port = (int)v;
        break;
    case DF_KEEPALIVE:
        if (v < 30 || v > 1200)
            FAIL(s, f, -1, "must be between 30 and 1200 seconds, got %lld", v);
        b->d.keepalive = (int)v;
        break;
    case DF_SECUREMODE:
        if (v != 2 && v != 3)
            FAIL(s, f, -1, "must be 2 (TLS) or 3 (plain TCP), got %lld", v);
        b->d.securemode = (int)v;
        break;
    case DF_MAXBYTES:
        if (v < 0)
            FAIL(s, f, -1, "must be 0 (no cap) or more, got %lld", v);
        b->d.max_bytes = v;
        break;
    default:
        return;
    }
    b->set |= BIT(f);
}

static void set_rate(struct dsrc *s, struct dev_build *b, double v)
{
    if (!(v >= 0 && v <= 1e6))
        FAIL(s, DF_RATE, -1, "must be between 0 (unlimited) and 1000000, got %g", v);
    b->d.rate = v;
    b->set |= BIT(DF_RATE);
}

static void set_bool(struct dsrc *s, struct dev_build *b, int f, bool v)
{
    switch (f) {
    case DF_TLS:
        b->d.tls = v;
        break;
    case DF_VERIFY:
        b->d.verify_hostname = v;
        break;
    case DF_TS:
        b->d.timestamp = v;
        break;
    case DF_CLEAN:
        b->d.clean_session = v;
        break;
    case DF_RECONNECT:
        b->d.auto_reconnect = v;
        break;
    default:
        return;
    }
    b->set |= BIT(f);
}

static void set_enum(struct dsrc *s, struct dev_build *b, int f, const char *v)
{
    if (f == DF_REGISTER) {
        int reg;
        char names[256];
        if (!choice_find(register_choices, v, &reg)) {
            choice_names(register_choices, names, sizeof(names));
            FAIL(s, f, -1, "must be %s, got \"%s\"", names, v);
        }
        b->d.reg = (enum reg_method)reg;
    } else if (f == DF_SIGN) {
        if (sign_method_parse(v, &b->d.sign_method) < 0)
            FAIL(s, f, -1, "must be \"hmacsha256\", \"hmacsha1\" or \"hmacmd5\", got \"%s\"", v);
    } else {
        return;
    }
    b->set |= BIT(f);
}

static void add_topic(struct dsrc *s, struct dev_build *b, long idx, const char *v)
{
    const char *why = placeholder_problem(v);
    if (v[0] != '/')
        FAIL(s, DF_TOPICS, idx, "must start with '/': \"%s\"", v);
    if (strlen(v) > 1024)
        FAIL(s, DF_TOPICS, idx, "too long (at most 1024 bytes)");
    if (why)
        FAIL(s, DF_TOPICS, idx, "%s: \"%s\"", why, v);
    if (b->d.n_topics == b->topics_cap) {
        size_t ncap = b->topics_cap ? b->topics_cap * 2 : 4;
        char **nv = realloc(b->d.topics, ncap * sizeof(*nv));
        if (!nv) {
            s->L->oom = true;
            return;
        }
        b->d.topics = nv;
        b->topics_cap = ncap;
    }
    char *t = ldup(s->L, v);
    if (t)
        b->d.topics[b->d.n_topics++] = t;
    b->set |= BIT(DF_TOPICS);
}

/* A device being read from a JSON object (or the per-device keys of "cloud"). */
struct dev_walk {
    struct dsrc *s;
    struct dev_build *b;
    unsigned mask; /* BIT(field) for each field the object may set */
};

/* One member of a device object (an other_fn, ctx a dev_walk). false when k is not a field. */
static bool dev_json_member(struct loader *L, void *ctx, const char *k, json_t *v, const char *path)
{
    struct dev_walk *w = ctx;
    struct dsrc *s = w->s;
    struct dev_build *b = w->b;
    int f = dfield_lookup(k);
    if (f < 0 || !(w->mask & BIT(f)))
        return false;
    switch (f) {
    case DF_PK:
    case DF_DN:
    case DF_SECRET:
    case DF_PSECRET:
    case DF_CLIENT_ID:
    case DF_HOST:
    case DF_CA:
    case DF_REGISTER:
    case DF_SIGN:
        if (!json_is_string(v)) {
            dev_err(s, f, -1, "must be a string, got %s", json_type_name(v));
        } else if (strlen(json_string_value(v)) != json_string_length(v)) {
            dev_err(s, f, -1, "must not contain NUL characters");
        } else if (f == DF_REGISTER || f == DF_SIGN) {
            set_enum(s, b, f, json_string_value(v));
        } else {
            set_str(s, b, f, json_string_value(v));
            if (f == DF_SECRET || f == DF_PSECRET)
                s->L->secrets_inline = true;
        }
        break;
    case DF_PORT:
    case DF_KEEPALIVE:
    case DF_SECUREMODE:
    case DF_MAXBYTES:
        if (json_is_real(v))
            dev_err(s, f, -1, "must be an integer, got %g", json_real_value(v));
        else if (!json_is_integer(v))
            dev_err(s, f, -1, "must be an integer, got %s", json_type_name(v));
        else
            set_int(s, b, f, json_integer_value(v));
        break;
    case DF_RATE:
        if (!json_is_number(v))
            dev_err(s, f, -1, "must be a number, got %s", json_type_name(v));
        else
            set_rate(s, b, json_number_value(v));
        break;
    case DF_TLS:
    case DF_VERIFY:
    case DF_TS:
    case DF_CLEAN:
    case DF_RECONNECT:
        if (!json_is_boolean(v))
            dev_err(s, f, -1, "must be true or false, got %s", json_type_name(v));
        else
            set_bool(s, b, f, json_is_true(v));
        break;
    case DF_TOPICS: {
        size_t i;
        json_t *el;
        if (!json_is_array(v)) {
            dev_err(s, f, -1, "must be an array of strings, got %s", json_type_name(v));
            break;
        }
        b->set |= BIT(DF_TOPICS);
        json_array_foreach(v, i, el)
        {
            if (!json_is_string(el) || strlen(json_string_value(el)) != json_string_length(el))
                dev_err(s, f, (long)i, "must be a string, got %s", json_type_name(el));
            else
                add_topic(s, b, (long)i, json_string_value(el));
        }
        break;
    }
    default:
        return false;
    }
    return true;
}

/* The built-in per-device defaults, before "cloud" applies its keys. */
static void defaults_init(struct device_conf *d)
{
    memset(d, 0, sizeof(*d));
    d->tls = true;
    d->verify_hostname = true;
    d->sign_method = SIGN_HMACSHA256;
    d->timestamp = true;
    d->keepalive = 300;
    d->clean_session = false;
    d->auto_reconnect = true;
    d->rate = 30;
}

/*
 * Checks a parsed device as a whole and resolves every field not given against def (the cloud
 * defaults). Returns true when the device is valid; b->d then owns resolved values.
 */
static bool dev_finish(struct dsrc *s, struct dev_build *b, const struct config *c,
                       const struct device_conf *def)
{
    struct loader *L = s->L;
    struct device_conf *d = &b->d;
    unsigned set = b->set;
    bool has_ds = set & BIT(DF_SECRET), has_ps = set & BIT(DF_PSECRET);

    if (!(set & BIT(DF_PK)) && !(s->errbits & BIT(DF_PK)))
        dev_err(s, DF_PK, -1, "missing");
    if (!(set & BIT(DF_DN)) && !(s->errbits & BIT(DF_DN)))
        dev_err(s, DF_DN, -1, "missing");
    if (!(set & BIT(DF_REGISTER)))
        d->reg = REG_NONE;
    unsigned combo = BIT(DF_SECRET) | BIT(DF_PSECRET) | BIT(DF_REGISTER);
    if (s->errbits & combo) {
        /* One of them was already reported: the combination can't be judged. */
    } else if (has_ds && d->reg != REG_NONE)
        dev_err(s, DF_REGISTER, -1,
                "device_secret and register exclude each other: give device_secret, or "
                "product_secret with register");
    else if (!has_ds && !has_ps && d->reg == REG_NONE)
        dev_err(s, DF_SECRET, -1,
                "missing: give device_secret, or product_secret with register "
                "(https, mqtt or mqtt-nwl)");
    else if (has_ps && !has_ds && d->reg == REG_NONE)
        dev_err(s, DF_REGISTER, -1,
                "missing: product_secret needs register (https, mqtt or "
                "mqtt-nwl)");
    else if (d->reg != REG_NONE && !has_ps)
        dev_err(s, DF_PSECRET, -1, "missing: register needs product_secret");
    if (s->bad)
        return false;
    if (has_ds && has_ps) {
        free(d->product_secret); /* unused: the device already has its own secret */
        d->product_secret = NULL;
    }

    if (!(set & BIT(DF_TLS)))
        d->tls = def->tls;
    if (!(set & BIT(DF_PORT)))
        d->port = def->port ? def->port : (d->tls ? 8883 : 1883);
    if (!(set & BIT(DF_SECUREMODE)))
        d->securemode = def->securemode ? def->securemode : (d->tls ? 2 : 3);
    if (!(set & BIT(DF_VERIFY)))
        d->verify_hostname = def->verify_hostname;
    if (!(set & BIT(DF_SIGN)))
        d->sign_method = def->sign_method;
    if (!(set & BIT(DF_TS)))
        d->timestamp = def->timestamp;
    if (!(set & BIT(DF_KEEPALIVE)))
        d->keepalive = def->keepalive;
    if (!(set & BIT(DF_CLEAN)))
        d->clean_session = def->clean_session;
    if (!(set & BIT(DF_RECONNECT)))
        d->auto_reconnect = def->auto_reconnect;
    if (!(set & BIT(DF_RATE)))
        d->rate = 30;
    if (!(set & BIT(DF_MAXBYTES)))
        d->max_bytes = 0;
    if (!(set & BIT(DF_CA)))
        d->ca_file = ldup(L, def->ca_file ? def->ca_file : DEFAULT_CA_FILE);
    if (!(set & BIT(DF_HOST))) {
        if (def->host)
            d->host = ldup(L, def->host);
        else if (c && c->cloud.instance_id)
            d->host = lfmt(L, "%s.mqtt.iothub.aliyuncs.com", c->cloud.instance_id);
        else
            d->host = lfmt(L, "%s.iot-as-mqtt.%s.aliyuncs.com", d->product_key,
                           c && c->cloud.region ? c->cloud.region : "cn-shanghai");
    }
    if (set & BIT(DF_CLIENT_ID)) {
        char *x = expand(L, d->client_id, d->product_key, d->device_name);
        free(d->client_id);
        d->client_id = x;
        if (x && strlen(x) > 64) {
            dev_err(s, DF_CLIENT_ID, -1, "too long after expansion (%zu characters, at most 64)",
                    strlen(x));
            return false;
        }
    } else {
        d->client_id = lfmt(L, "%s.%s", d->product_key, d->device_name);
    }
    for (size_t i = 0; i < d->n_topics; i++) {
        char *x = expand(L, d->topics[i], d->product_key, d->device_name);
        if (x) {
            free(d->topics[i]);
            d->topics[i] = x;
        }
    }
    return !L->oom;
}

void config_device_conf_free(struct device_conf *d)
{
    if (!d)
        return;
    free(d->product_key);
    free(d->device_name);
    free(d->device_secret);
    free(d->product_secret);
    free(d->client_id);
    free(d->host);
    free(d->ca_file);
    free_strv(d->topics, d->n_topics);
    memset(d, 0, sizeof(*d));
}

static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (src && !(*dst = strdup(src)))
        return -ENOMEM;
    return 0;
}

int config_device_conf_copy(struct device_conf *dst, const struct device_conf *src)
{
    *dst = *src;
    dst->product_key = dst->device_name = dst->device_secret = dst->product_secret = NULL;
    dst->client_id = dst->host = dst->ca_file = NULL;
    dst->topics = NULL;
    dst->n_topics = 0;
    if (dup_opt(&dst->product_key, src->product_key) < 0 ||
        dup_opt(&dst->device_name, src->device_name) < 0 ||
        dup_opt(&dst->device_secret, src->device_secret) < 0 ||
        dup_opt(&dst->product_secret, src->product_secret) < 0 ||
        dup_opt(&dst->client_id, src->client_id) < 0 || dup_opt(&dst->host, src->host) < 0 ||
        dup_opt(&dst->ca_file, src->ca_file) < 0)
        goto fail;
    if (src->n_topics) {
        dst->topics = calloc(src->n_topics, sizeof(*dst->topics));
        if (!dst->topics)
            goto fail;
        for (size_t i = 0; i < src->n_topics; i++) {
            if (dup_opt(&dst->topics[i], src->topics[i]) < 0)
                goto fail;
            dst->n_topics++;
        }
    }
    return 0;
fail:
    config_device_conf_free(dst);
    return -ENOMEM;
}

/* ---- the device index ----------------------------------------------------------------------- */

static uint32_t dev_hash(const char *pk, const char *dn)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)pk; *p; p++)
        h = (h ^ *p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const unsigned char *p = (const unsigned char *)dn; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static int index_grow(struct config_index *ix)
{
    size_t ncap = ix->cap ? ix->cap * 2 : 256;
    struct islot *ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; i < ix->cap; i++) {
        if (!ix->slots[i].idx1)
            continue;
        size_t j = ix->slots[i].hash & (ncap - 1);
        while (ns[j].idx1)
            j = (j + 1) & (ncap - 1);
        ns[j] = ix->slots[i];
    }
    free(ix->slots);
    ix->slots = ns;
    ix->cap = ncap;
    return 0;
}

static long index_find(const struct config_index *ix, const struct device_conf *devs,
                       const char *pk, const char *dn, uint32_t h)
{
    if (!ix->cap)
        return -1;
    for (size_t j = h & (ix->cap - 1); ix->slots[j].idx1; j = (j + 1) & (ix->cap - 1)) {
        const struct device_conf *d = &devs[ix->slots[j].idx1 - 1];
        if (ix->slots[j].hash == h && strcmp(d->product_key, pk) == 0 &&
            strcmp(d->device_name, dn) == 0)
            return (long)(ix->slots[j].idx1 - 1);
    }
    return -1;
}

/*
 * Adds devs[i] to the index. Returns -1 when added, or the index of an earlier device with the
 * same key (the new one is then not indexed).
 */
static long index_add(struct loader *L, struct config_index *ix, const struct device_conf *devs,
                      size_t i)
{
    uint32_t h = dev_hash(devs[i].product_key, devs[i].device_name);
    long prev = index_find(ix, devs, devs[i].product_key, devs[i].device_name, h);
    if (prev >= 0)
        return prev;
    if ((ix->n + 1) * 2 > ix->cap && index_grow(ix) < 0) {
        L->oom = true;
        return -1;
    }
    size_t j = h & (ix->cap - 1);
    while (ix->slots[j].idx1)
        j = (j + 1) & (ix->cap - 1);
    ix->slots[j] = (struct islot){h, i + 1};
    ix->n++;
    return -1;
}

const struct device_conf *config_find_device(const struct config *c, const char *pk, const char *dn)
{
    if (!c || !pk || !dn)
        return NULL;
    if (c->index && c->index->n == c->n_devices) {
        long i = index_find(c->index, c->devices, pk, dn, dev_hash(pk, dn));
        return i >= 0 ? &c->devices[i] : NULL;
    }
    for (size_t i = 0; i < c->n_devices; i++)
        if (strcmp(c->devices[i].product_key, pk) == 0 &&
            strcmp(c->devices[i].device_name, dn) == 0)
            return &c->devices[i];
    return NULL;
}

static void origin_text(struct loader *L, const struct origin *o, char *buf, size_t n)
{
    snprintf(buf, n, "%s:%d:%d", o->src == SRC_DEVICES ? L->dev_display : L->name, o->line, o->col);
}

/* Takes a finished device into the config, or reports it as a duplicate. */
static void dev_commit(struct loader *L, struct dsrc *s, struct dev_build *b, struct origin o)
{
    struct config *c = L->c;
    if (c->n_devices == L->dev_cap) {
        size_t ncap = L->dev_cap ? L->dev_cap * 2 : 16;
        struct device_conf *nd = realloc(c->devices, ncap * sizeof(*nd));
        struct origin *no = nd ? realloc(L->orig, ncap * sizeof(*no)) : NULL;
        if (nd)
            c->devices = nd;
        if (!nd || !no) {
            L->oom = true;
            config_device_conf_free(&b->d);
            return;
        }
        L->orig = no;
        L->dev_cap = ncap;
    }
    c->devices[c->n_devices] = b->d;
    long prev = index_add(L, c->index, c->devices, c->n_devices);
    if (prev >= 0) {
        char where[512];
        origin_text(L, &L->orig[prev], where, sizeof(where));
        dev_err(s, DF_DN, -1, "duplicate device %s/%s (first defined at %s)", b->d.product_key,
                b->d.device_name, where);
        config_device_conf_free(&b->d);
        return;
    }
    L->orig[c->n_devices] = o;
    c->n_devices++;
    memset(&b->d, 0, sizeof(b->d));
}

static void parse_inline_devices(struct loader *L, json_t *arr)
{
    if (!json_is_array(arr)) {
        jerr(L, "devices", false, "must be an array of device objects, got %s",
             json_type_name(arr));
        return;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        char path[48];
        snprintf(path, sizeof(path), "devices[%zu]", i);
        if (!j_object(L, o, path))
            continue;
        struct dsrc s = {.L = L, .path = path};
        struct dev_build b = {0};
        struct dev_walk w = {&s, &b, MASK_DEVICE};
        if (!walk(L, o, path, NULL, dev_json_member, &w))
            s.bad = true;
        if (!dev_finish(&s, &b, L->c, &L->c->cloud.defaults)) {
            config_device_conf_free(&b.d);
            continue;
        }
        struct origin org = {SRC_CONFIG, 0, 0};
        char *dp = lfmt(L, "%s.device_name", path);
        if (dp)
            json_pos(L, dp, false, &org.line, &org.col);
        free(dp);
        dev_commit(L, &s, &b, org);
    }
}

/* ---- the devices file (CSV) ----------------------------------------------------------------- */

struct cfield {
    char *s; /* decoded, NUL-terminated, inside the file buffer */
    int line, col;
};

static bool parse_ll(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

static int parse_bool_text(const char *s)
{
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes"))
        return 1;
    if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no"))
        return 0;
    return -1;
}

static void csv_row(struct loader *L, const int *colmap, size_t ncols, const char *const *names,
                    struct cfield *fv, size_t nf, int row_line)
{
    struct dsrc s = {.L = L, .path = NULL, .line = row_line};
    struct dev_build b = {0};
    if (nf != ncols) {
        if (nf < ncols)
            report(L, SRC_DEVICES, row_line, 1, names[nf], "row has %zu fields, the header has %zu",
                   nf, ncols);
        else
            report(L, SRC_DEVICES, fv[ncols].line, fv[ncols].col, "(extra field)",
                   "row has %zu fields, the header has %zu", nf, ncols);
        return;
    }
    for (size_t i = 0; i < nf; i++) {
        int f = colmap[i];
        if (f >= 0) {
            s.fline[f] = fv[i].line;
            s.fcol[f] = fv[i].col;
        }
    }
    for (size_t i = 0; i < nf; i++) {
        int f = colmap[i];
        const char *v = fv[i].s;
        long long x;
        if (f < 0 || !v[0])
            continue; /* a hub_ column, or empty: not set */
        switch (f) {
        case DF_SECRET:
        case DF_PSECRET:
            L->secrets_file = true;
            /* fall through */
        case DF_PK:
        case DF_DN:
        case DF_CLIENT_ID:
        case DF_HOST:
            set_str(&s, &b, f, v);
            break;
        case DF_REGISTER:
            set_enum(&s, &b, f, v);
            break;
        case DF_KEEPALIVE:
        case DF_PORT:
            if (!parse_ll(v, &x))
                dev_err(&s, f, -1, "must be an integer, got \"%s\"", v);
            else
                set_int(&s, &b, f, x);
            break;
        case DF_RATE: {
            char *end;
            double r = strtod(v, &end);
            if (end == v || *end)
                dev_err(&s, f, -1, "must be a number, got \"%s\"", v);
            else
                set_rate(&s, &b, r);
            break;
        }
        case DF_TLS: {
            int t = parse_bool_text(v);
            if (t < 0)
                dev_err(&s, f, -1, "must be true or false, got \"%s\"", v);
            else
                set_bool(&s, &b, f, t);
            break;
        }
        case DF_TOPICS: {
            char *p = fv[i].s;
            for (;;) {
                char *semi = strchr(p, ';');
                if (semi)
                    *semi = '\0';
                if (*p)
                    add_topic(&s, &b, -1, p);
                if (!semi)
                    break;
                p = semi + 1;
            }
            break;
        }
        default:
            break;
        }
    }
    if (!dev_finish(&s, &b, L->c, &L->c->cloud.defaults)) {
        config_device_conf_free(&b.d);
        return;
    }
    int dl = s.fline[DF_DN], dc = s.fcol[DF_DN];
    dev_commit(L, &s, &b, (struct origin){SRC_DEVICES, dl, dc});
}

static void parse_devices_file(struct loader *L, char *buf, size_t len)
{
    char *p = buf, *end = buf + len, *w = buf;
    int line = 1, col = 1;
    struct cfield *fv = NULL;
    size_t nf = 0, fcap = 0;
    int *colmap = NULL;
    const char **names = NULL;
    size_t ncols = 0;
    bool have_header = false;

    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p = w = buf + 3;

#define ADV()                                                                                      \
    do {                                                                                           \
        if (*p == '\n') {                                                                          \
            line++;                                                                                \
            col = 1;                                                                               \
        } else if (((unsigned char)*p & 0xC0) != 0x80) {                                           \
            col++;                                                                                 \
        }                                                                                          \
        p++;                                                                                       \
    } while (0)

    while (p < end) {
        /* Blank lines and comment lines. */
        char *q = p;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (q == end || *q == '\n' || (*q == '\r' && q + 1 < end && q[1] == '\n') ||
            (q == end - 1 && *q == '\r') || *p == '#') {
            while (p < end && *p != '\n')
                p++;
            if (p < end)
                p++;
            line++;
            col = 1;
            continue;
        }
        int row_line = line;
        bool row_bad = false, eor = false;
        nf = 0;
        while (!eor) {
            if (nf == fcap) {
                size_t ncap = fcap ? fcap * 2 : 16;
                struct cfield *n = realloc(fv, ncap * sizeof(*n));
                if (!n) {
                    L->oom = true;
                    goto out;
                }
                fv = n;
                fcap = ncap;
            }
            struct cfield *fd = &fv[nf++];
            fd->line = line;
            fd->col = col;
            fd->s = w;
            if (p < end && *p == '"') {
                ADV();
                for (;;) {
                    if (p >= end) {
                        report(L, SRC_DEVICES, fd->line, fd->col,
                               have_header && nf - 1 < ncols ? names[nf - 1] : "(field)",
                               "quoted field is not closed");
                        goto out;
                    }
                    if (*p == '"') {
                        if (p + 1 < end && p[1] == '"') {
                            *w++ = '"';
                            ADV();
                            ADV();
                            continue;
                        }
                        ADV();
                        break;
                    }
                    *w++ = *p;
                    ADV();
                }
                if (p < end && *p != ',' && *p != '\n' &&
                    !(*p == '\r' && p + 1 < end && p[1] == '\n') && !(*p == '\r' && p + 1 == end)) {
                    if (!row_bad)
                        report(L, SRC_DEVICES, line, col,
                               have_header && nf - 1 < ncols ? names[nf - 1] : "(field)",
                               "text after a closing quote");
                    row_bad = true;
                    while (p < end && *p != ',' && *p != '\n')
                        ADV();
                }
            } else {
                while (p < end && *p != ',' && *p != '\n' &&
                       !(*p == '\r' && (p + 1 == end || p[1] == '\n'))) {
                    if (*p == '"' && !row_bad) {
                        report(L, SRC_DEVICES, line, col,
                               have_header && nf - 1 < ncols ? names[nf - 1] : "(field)",
                               "a quote inside an unquoted field (quote the whole field)");
                        row_bad = true;
                    }
                    *w++ = *p;
                    ADV();
                }
            }
            /* p is at a delimiter or the end: read it before the NUL may overwrite it. */
            char d = p < end ? *p : '\0';
            *w++ = '\0';
            if (d == ',') {
                p++;
                col++;
            } else {
                if (d == '\r')
                    p++;
                if (p < end) {
                    p++; /* '\n' */
                    line++;
                    col = 1;
                }
                eor = true;
            }
        }
        if (!have_header) {
            have_header = true;
            ncols = nf;
            colmap = malloc(ncols * sizeof(*colmap));
            names = malloc(ncols * sizeof(*names));
            if (!colmap || !names) {
                L->oom = true;
                goto out;
            }
            bool seen[DF__N] = {0}, hdr_bad = false;
            for (size_t i = 0; i < nf; i++) {
                names[i] = fv[i].s;
                int f = dfield_lookup(fv[i].s);
                colmap[i] = -1;
                if (strncmp(fv[i].s, "hub_", 4) == 0)
                    continue;
                if (f < 0 || !(MASK_CSV & BIT(f))) {
                    report(L, SRC_DEVICES, fv[i].line, fv[i].col, fv[i].s[0] ? fv[i].s : "\"\"",
                           "unknown column (columns: product_key, device_name, device_secret, "
                           "product_secret, register, client_id, keepalive, rate, host, port, "
                           "tls, topics, hub_*)");
                    hdr_bad = true;
                } else if (seen[f]) {
                    report(L, SRC_DEVICES, fv[i].line, fv[i].col, fv[i].s, "duplicate column");
                    hdr_bad = true;
                } else {
                    seen[f] = true;
                    colmap[i] = f;
                }
            }
            if (!seen[DF_PK] || !seen[DF_DN]) {
                report(L, SRC_DEVICES, row_line, 1, !seen[DF_PK] ? "product_key" : "device_name",
                       "required column missing from the header line");
                hdr_bad = true;
            }
            if (hdr_bad)
                goto out; /* rows can't be read reliably against a bad header */
            continue;
        }
        if (!row_bad)
            csv_row(L, colmap, ncols, names, fv, nf, row_line);
    }
    if (!have_header)
        report(L, SRC_DEVICES, 0, 0, "(header)", "no header line (product_key,device_name,...)");
out:
#undef ADV
    free(fv);
    free(colmap);
    free(names);
}

/* ---- sections ------------------------------------------------------------------------------- */

static bool region_ok(const char *s)
{
    return strlen(s) <= 32 && chars_ok(s, "-");
}

static bool instance_id_ok(const char *s)
{
    return strlen(s) <= 64 && chars_ok(s, "-_");
}

static bool url_ok(const char *s)
{
    return strncmp(s, "https://", 8) == 0 || strncmp(s, "http://", 7) == 0;
}

static const struct key cloud_keys[] = {
    {"region", K_STR, CF(cloud.region), .ok = region_ok,
     .why = "not a region id (like \"cn-shanghai\")", .quote = true},
    {"instance_id", K_STR, CF(cloud.instance_id), .ok = instance_id_ok,
     .why = "not an instance id (like \"iot-06z00ab1cd2ef3g\")"},
    {"register_url", K_STR, CF(cloud.register_url), .ok = url_ok,
     .why = "must be an https:// (or http://) URL"},
    {"connect_rate", K_NUM, CF(cloud.connect_rate), .dlo = 0.01, .dhi = 100000},
    {"connect_burst", K_INT, CF(cloud.connect_burst), .lo = 1, .hi = 100000},
    {"backoff_min_ms", K_INT, CF(cloud.backoff_min_ms), .lo = 100, .hi = 3600000},
    {"backoff_max_ms", K_INT, CF(cloud.backoff_max_ms), .lo = 100, .hi = 86400000},
    {"auth_backoff_ms", K_INT, CF(cloud.auth_backoff_ms), .lo = 1000, .hi = 86400000},
    {"kick_backoff_ms", K_INT, CF(cloud.kick_backoff_ms), .lo = 1000, .hi = 86400000},
    {"ack_timeout_ms", K_INT, CF(cloud.ack_timeout_ms), .lo = 0, .hi = 3600000},
    {0},
};

/* "cloud": its own keys, and the per-device keys it sets for every device. o may be NULL. */
static void parse_cloud(struct loader *L, json_t *o)
{
    struct dsrc s = {.L = L, .path = "cloud"};
    struct dev_build b = {0};
    struct dev_walk w = {&s, &b, MASK_CLOUD};

    defaults_init(&b.d);
    if (o && j_object(L, o, "cloud"))
        walk(L, o, "cloud", cloud_keys, dev_json_member, &w);
    if (!(b.set & BIT(DF_CA)))
        b.d.ca_file = ldup(L, DEFAULT_CA_FILE);
    /* host, port and securemode stay 0/NULL unless given: they are derived per device. */
    L->c->cloud.defaults = b.d;
}

static const struct key store_keys[] = {
    {"path", K_PATH, CF(store.path)},
    {"durability", K_CHOICE, CF(store.durability), .choices = durability_choices},
    {"max_bytes", K_INT, CF(store.max_bytes), .lo = 65536, .hi = INT64_MAX},
    {"policy", K_CHOICE, CF(store.policy), .choices = policy_choices},
    {"ttl", K_INT, CF(store.ttl_s), .lo = 0, .hi = 100LL * 365 * 86400},
    {"inflight", K_INT, CF(store.inflight), .lo = 1, .hi = 65534},
    {"inflight_total", K_INT, CF(store.inflight_total), .lo = 1, .hi = 65534},
    {0},
};

static void parse_store(struct loader *L, void *ctx, json_t *o, const char *path)
{
    struct config *c = L->c;
    if (!j_object(L, o, path))
        return;
    walk(L, o, path, store_keys, NULL, NULL);
    if (c->store.inflight > c->store.inflight_total)
        jerr(L, "store.inflight", false, "must not exceed store.inflight_total (%d)",
             c->store.inflight_total);
}

static const struct key api_keys[] = {
    {"socket", K_PATH, CF(api.socket)},
    {"group", K_STR, CF(api.group), .ok = valid_name_char_list, .why = "not a valid group name"},
    {"allow_users", K_NAMES, CF(api.allow_users),
     .off2 = offsetof(struct config, api.n_allow_users)},
    {"allow_groups", K_NAMES, CF(api.allow_groups),
     .off2 = offsetof(struct config, api.n_allow_groups)},
    {"admin_users", K_NAMES, CF(api.admin_users),
     .off2 = offsetof(struct config, api.n_admin_users)},
    {"admin_groups", K_NAMES, CF(api.admin_groups),
     .off2 = offsetof(struct config, api.n_admin_groups)},
    {"max_line", K_INT, CF(api.max_line), .lo = 4096, .hi = 64LL << 20},
    {"max_payload", K_INT, CF(api.max_payload), .lo = 1, .hi = 64LL << 20},
    {"service_timeout_ms", K_INT, CF(api.service_timeout_ms), .lo = 100, .hi = 600000},
    {0},
};

static void parse_api(struct loader *L, void *ctx, json_t *o, const char *path)
{
    struct config *c = L->c;
    if (!j_object(L, o, path))
        return;
    walk(L, o, path, api_keys, NULL, NULL);
    if (c->api.max_payload > c->api.max_line)
        jerr(L, "api.max_payload", false, "must not exceed api.max_line (%zu)", c->api.max_line);
}

/* One entry of "plugins" being read (the ctx of its key handlers). */
struct plugin_walk {
    struct plugin_conf *pc;
    size_t i; /* its index in "plugins" */
    bool named;
};

static void plugin_name(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    struct plugin_conf *pc = w->pc;
    const char *str;
    w->named = true;
    if (!j_nonempty(L, v, p, &str))
        return;
    if (strchr(str, '/')) {
        pc->name = ldup(L, str);
        pc->path = resolve_path(L, str);
    } else if (strlen(str) > 64 || !chars_ok(str, "_-")) {
        jerr(L, p, false,
             "a plugin name may contain only letters, digits, '_' and '-' (or "
             "give a path containing '/')");
    } else {
        const char *env = getenv("ALIGW_PLUGIN_PATH");
        pc->name = ldup(L, str);
        pc->path = lfmt(L, "%s/%s.so", env && *env ? env : ALIGW_PLUGIN_DIR, str);
    }
}

static void plugin_config(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    if (j_object(L, v, p))
        w->pc->config = json_incref(v);
}

/* The plugin's devices: each one configured, and owned by no other plugin. */
static void plugin_devices(struct loader *L, void *ctx, json_t *v, const char *p)
{
    struct plugin_walk *w = ctx;
    struct plugin_conf *pc = w->pc;
    struct config *c = L->c;
    const char *str;
    if (!json_is_array(v)) {
        jerr(L, p, false, "must be an array of \"productKey/deviceName\" strings");
        return;
    }
    pc->devices = calloc(json_array_size(v) + 1, sizeof(*pc->devices));
    if (!pc->devices) {
        L->oom = true;
        return;
    }
    size_t j;
    json_t *el;
    json_array_foreach(v, j, el)
    {
        char ep[128];
        snprintf(ep, sizeof(ep), "%s[%zu]", p, j);
        if (!j_str(L, el, ep, &str))
            continue;
        const char *slash = strchr(str, '/');
        if (!slash || slash == str || !slash[1]) {
            jerr(L, ep, false, "must be \"productKey/deviceName\", got \"%s\"", str);
            continue;
        }
        char *pk = strndup(str, (size_t)(slash - str));
        if (!pk) {
            L->oom = true;
            continue;
        }
        const struct device_conf *d = NULL;
        uint32_t h = dev_hash(pk, slash + 1);
        long di = index_find(c->index, c->devices, pk, slash + 1, h);
        free(pk);
        if (di >= 0)
            d = &c->devices[di];
        if (!d) {
            jerr(L, ep, false, "no such device \"%s\" (not in devices or devices_file)", str);
            continue;
        }
        if (L->owner[di] >= 0) {
            jerr(L, ep, false, "device %s already belongs to plugins[%d]", str, L->owner[di]);
            continue;
        }
        L->owner[di] = (int)w->i;
        pc->devices[pc->n_devices++] = ldup(L, str);
    }
}

static const struct key plugin_keys[] = {
    {"name", K_FN, .fn = plugin_name},
    {"config", K_FN, .fn = plugin_config},
    {"devices", K_FN, .fn = plugin_devices},
    {0},
};

static void parse_plugins(struct loader *L, json_t *arr)
{
    struct config *c = L->c;
    if (!json_is_array(arr)) {
        jerr(L, "plugins", false, "must be an array of plugin objects, got %s",
             json_type_name(arr));
        return;
    }
    c->plugins = calloc(json_array_size(arr) + 1, sizeof(*c->plugins));
    if (!c->plugins) {
        L->oom = true;
        return;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        char path[48];
        snprintf(path, sizeof(path), "plugins[%zu]", i);
        if (!j_object(L, o, path))
            continue;
        struct plugin_walk w = {.pc = &c->plugins[c->n_plugins++], .i = i};
        walk(L, o, path, plugin_keys, NULL, &w);
        if (!w.named)
            jerr(L, path, false, "a plugin needs a \"name\"");
        if (!w.pc->config)
            w.pc->config = json_object();
    }
}

/* ---- the whole file ------------------------------------------------------------------------- */

static void config_defaults(struct config *c)
{
    c->log_level = LOG_INFO;
    c->cloud.connect_rate = 50;
    c->cloud.backoff_min_ms = 1000;
    c->cloud.backoff_max_ms = 120000;
    c->cloud.auth_backoff_ms = 300000;
    c->cloud.kick_backoff_ms = 60000;
    c->cloud.ack_timeout_ms = 30000;
    c->store.durability = DURABILITY_NORMAL;
    c->store.max_bytes = (int64_t)1 << 30;
    c->store.policy = STORE_DROP_OLDEST;
    c->store.ttl_s = 7 * 86400;
    c->store.inflight = 32;
    c->store.inflight_total = 2048;
    c->api.max_line = 1 << 20;
    c->api.max_payload = 256 << 10;
    c->api.service_timeout_ms = 8000;
}

static void check_private(struct loader *L, const char *display, const struct stat *st)
{
    if (st->st_mode & S_IROTH)
        warn(L,
             "%s: holds secrets and every user can read it (mode %04o); run chmod 640 %s (or "
             "600), owned by root and the aligw group",
             display, (unsigned)(st->st_mode & 07777), display);
}

static void load_devices_file(struct loader *L, const char *given)
{
    struct config *c = L->c;
    c->devices_file = resolve_path(L, given);
    if (!c->devices_file)
        return;
    /* Messages name the file as the config does, relative to the config's own name. */
    const char *slash = L->name ? strrchr(L->name, '/') : NULL;
    if (given[0] == '/' || !slash)
        L->dev_display = ldup(L, given);
    else
        L->dev_display = lfmt(L, "%.*s/%s", (int)(slash - L->name), L->name, given);
    if (!L->dev_display)
        return;
    char *buf = NULL;
    size_t len;
    struct stat st;
    int r = read_file(c->devices_file, &buf, &len, &st);
    if (r < 0) {
        jerr(L, "devices_file", false, "cannot read %s: %s", c->devices_file, file_error(r));
        return;
    }
    parse_devices_file(L, buf, len);
    free(buf);
    if (L->secrets_file)
        check_private(L, L->dev_display, &st);
}

static void root_log_level(struct loader *L, void *ctx, json_t *v, const char *p)
{
    const char *str;
    if (!j_str(L, v, p, &str))
        return;
    int lv = log_level_parse(str);
    if (lv < 0)
        jerr(L, p, false,
             "must be \"error\", \"warning\", \"notice\", \"info\" or \"debug\", got \"%s\"", str);
    else
        L->c->log_level = lv;
}

/* The top level. The keys read after the walk are those whose order matters. */
static const struct key root_keys[] = {
    {.name = "cloud", .kind = K_SKIP},
    {.name = "devices", .kind = K_SKIP},
    {.name = "devices_file", .kind = K_SKIP},
    {.name = "plugins", .kind = K_SKIP},
    {"log_level", K_FN, .fn = root_log_level},
    {"state_dir", K_PATH, CF(state_dir)},
    {"runtime_dir", K_PATH, CF(runtime_dir)},
    {"store", K_FN, .fn = parse_store},
    {"api", K_FN, .fn = parse_api},
    {0},
};

static void parse_root(struct loader *L, json_t *root)
{
    struct config *c = L->c;
    const char *str;
    json_t *cloud = json_object_get(root, "cloud");

    /* "cloud" first: devices resolve against it wherever it stands in the file. */
    if (cloud)
        parse_cloud(L, cloud);
    else
        parse_cloud(L, NULL);
    if (!c->cloud.region)
        c->cloud.region = ldup(L, "cn-shanghai");

    walk(L, root, "", root_keys, NULL, NULL);

    json_t *devs = json_object_get(root, "devices");
    if (devs)
        parse_inline_devices(L, devs);
    json_t *df = json_object_get(root, "devices_file");
    if (df && j_nonempty(L, df, "devices_file", &str))
        load_devices_file(L, str);

    L->owner = malloc((c->n_devices + 1) * sizeof(*L->owner));
    if (!L->owner) {
        L->oom = true;
        return;
    }
    for (size_t i = 0; i < c->n_devices; i++)
        L->owner[i] = -1;
    json_t *plugins = json_object_get(root, "plugins");
    if (plugins)
        parse_plugins(L, plugins);

    /* Defaults that depend on other keys. */
    if (!c->state_dir)
        c->state_dir = ldup(L, "/var/lib/aligw");
    if (!c->runtime_dir)
        c->runtime_dir = ldup(L, "/run/aligw");
    if (!c->store.path && c->state_dir)
        c->store.path = lfmt(L, "%s/outbox.db", c->state_dir);
    if (!c->api.socket && c->runtime_dir)
        c->api.socket = lfmt(L, "%s/aligw.sock", c->runtime_dir);
    if (c->api.socket && strlen(c->api.socket) > 107)
        jerr(L, json_object_get(json_object_get(root, "api"), "socket") ? "api.socket" : "api",
             false, "socket path too long (%zu bytes, a Unix socket allows 107): %s",
             strlen(c->api.socket), c->api.socket);
    if (!c->cloud.register_url && c->cloud.region)
        c->cloud.register_url =
            lfmt(L, "https://iot-auth.%s.aliyuncs.com/auth/register/device", c->cloud.region);
    if (!c->cloud.connect_burst)
        c->cloud.connect_burst = c->cloud.connect_rate < 1 ? 1 : (int)ceil(c->cloud.connect_rate);
    if (c->cloud.backoff_max_ms < c->cloud.backoff_min_ms)
        jerr(L, "cloud.backoff_max_ms", false, "must not be below cloud.backoff_min_ms (%d)",
             c->cloud.backoff_min_ms);
}

/* The absolute directory of name (the current directory when name has none). */
static char *abs_dir(const char *name)
{
    char cwd[PATH_MAX];
    const char *slash = strrchr(name, '/');
    if (name[0] == '/')
        return strndup(name, slash == name ? 1 : (size_t)(slash - name));
    if (!getcwd(cwd, sizeof(cwd)))
        return NULL;
    char *out = NULL;
    int r = slash ? asprintf(&out, "%s/%.*s", cwd, (int)(slash - name), name)
                  : asprintf(&out, "%s", cwd);
    return r < 0 ? NULL : out;
}

static void loader_done(struct loader *L, struct config_errors *errs,
                        struct config_errors *warnings)
{
    elist_export(L, &L->errs, errs, true);
    elist_export(L, &L->warns, warnings, false);
    jsonpos_free(L->jp);
    free(L->dir);
    free(L->dev_display);
    free(L->orig);
    free(L->owner);
}

static int load_text(const char *name, const char *text, size_t len, const struct stat *st,
                     struct config **out, struct config_errors *errs,
                     struct config_errors *warnings)
{
    struct loader L = {.name = name};
    int r = -EINVAL;
    json_t *root = NULL;
    json_error_t jerror;
    struct config *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (c)
        c->index = calloc(1, sizeof(*c->index));
    L.dir = abs_dir(name);
    if (c)
        c->path = strdup(name);
    if (!c || !c->index || !L.dir || !c->path) {
        L.oom = true;
        goto out;
    }
    L.c = c;
    config_defaults(c);

    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) {
        text += 3;
        len -= 3;
    }
    L.text = text;
    L.len = len;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerror);
    if (!root) {
        report(&L, SRC_CONFIG, jerror.line > 0 ? jerror.line : 0,
               jerror.column > 0 ? jerror.column : 0, "syntax", "%s", jerror.text);
        goto out;
    }
    L.jp = jsonpos_build(text, len);
    if (!L.jp) {
        L.oom = true;
        goto out;
    }
    if (!json_is_object(root)) {
        jerr(&L, "", false, "the configuration must be a JSON object, got %s",
             json_type_name(root));
        goto out;
    }
    parse_root(&L, root);
    if (L.secrets_inline && st)
        check_private(&L, name, st);
    if (!L.oom && L.errs.n == 0)
        r = 0;
out:
    json_decref(root);
    if (L.oom)
        r = -ENOMEM;
    if (r < 0 && L.oom)
        report(&L, SRC_CONFIG, 0, 0, "(config)", "out of memory");
    loader_done(&L, errs, warnings);
    if (r == 0) {
        *out = c;
    } else {
        config_free(c);
    }
    return r;
}

int config_load_buffer(const char *name, const char *text, size_t len, struct config **out,
                       struct config_errors *errs, struct config_errors *warnings)
{
    return load_text(name ? name : "(buffer)", text, len, NULL, out, errs, warnings);
}

int config_load(const char *path, struct config **out, struct config_errors *errs,
                struct config_errors *warnings)
{
    char *buf = NULL;
    size_t len;
    struct stat st;
    *out = NULL;
    int r = read_file(path, &buf, &len, &st);
    if (r < 0) {
        struct loader L = {.name = path};
        report(&L, SRC_CONFIG, 0, 0, "(file)", "cannot read: %s", file_error(r));
        elist_export(&L, &L.errs, errs, false);
        return r;
    }
    r = load_text(path, buf, len, &st, out, errs, warnings);
    free(buf);
    return r;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->state_dir);
    free(c->runtime_dir);
    free(c->cloud.region);
    free(c->cloud.instance_id);
    free(c->cloud.register_url);
    config_device_conf_free(&c->cloud.defaults);
    free(c->store.path);
    free(c->api.socket);
    free(c->api.group);
    free_strv(c->api.allow_users, c->api.n_allow_users);
    free_strv(c->api.allow_groups, c->api.n_allow_groups);
    free_strv(c->api.admin_users, c->api.n_admin_users);
    free_strv(c->api.admin_groups, c->api.n_admin_groups);
    free(c->devices_file);
    for (size_t i = 0; i < c->n_devices; i++)
        config_device_conf_free(&c->devices[i]);
    free(c->devices);
    for (size_t i = 0; i < c->n_plugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].path);
        json_decref(c->plugins[i].config);
        free_strv(c->plugins[i].devices, c->plugins[i].n_devices);
    }
    free(c->plugins);
    if (c->index)
        free(c->index->slots);
    free(c->index);
    free(c);
}

int config_device_from_json(const struct config *c, json_t *obj, struct device_conf *out,
                            struct config_errors *errs)
{
    struct loader L = {.name = NULL};
    struct dsrc s = {.L = &L, .path = ""};
    struct dev_build b = {0};
    struct dev_walk w = {&s, &b, MASK_DEVICE};
    struct device_conf builtin;
    int r = -EINVAL;

    memset(out, 0, sizeof(*out));
    defaults_init(&builtin);
    if (!json_is_object(obj)) {
        report(&L, SRC_CONFIG, 0, 0, "device", "must be a JSON object");
        goto out;
    }
    if (!walk(&L, obj, "", NULL, dev_json_member, &w))
        s.bad = true;
    if (dev_finish(&s, &b, c, c ? &c->cloud.defaults : &builtin) && L.errs.n == 0) {
        b.d.runtime = true;
        *out = b.d;
        memset(&b.d, 0, sizeof(b.d));
        r = 0;
    }
out:
    config_device_conf_free(&b.d);
    if (L.oom)
        r = -ENOMEM;
    elist_export(&L, &L.errs, errs, false);
    return r;
}
