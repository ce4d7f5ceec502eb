/*
 * config_loader: the machinery shared by the configuration parsers (config.c: the sections and
 * the whole file; config_devices.c: devices from JSON, the CSV devices file and the API).
 *
 * A struct loader carries one load: the text and its position index (every error names
 * file:line:column), the error and warning lists (collected, never stopping at the first), and
 * the config being built. The cfg_j_* readers check a JSON value's type and range and report at
 * its position; cfg_walk reads an object through a table of its keys (struct key). Internal to
 * the config module: nothing outside config*.c includes this header.
 */
#ifndef ALIGW_CONFIG_LOADER_H
#define ALIGW_CONFIG_LOADER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <jansson.h>

#include "config.h"

#define CONFIG_MAX_ERRORS 1000
#define CONFIG_MAX_FILE ((size_t)512 << 20)

/* Which file an error is in. */
enum { SRC_CONFIG = 0, SRC_DEVICES = 1 };

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

/* ---- reporting ---- */

/* An error at file src, line, col (0: unknown), about key; fmt never formats a secret. */
void cfg_report(struct loader *L, int src, int line, int col, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void cfg_vreport(struct loader *L, struct elist *e, int src, int line, int col, const char *key,
                 const char *fmt, va_list ap) __attribute__((format(printf, 7, 0)));
void cfg_warn(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An error at the JSON path (e.g. "devices[3].port"): at its key or at its value. */
void cfg_jerr(struct loader *L, const char *path, bool at_key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void cfg_vjerr(struct loader *L, const char *path, bool at_key, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
void cfg_json_pos(struct loader *L, const char *path, bool at_key, int *line, int *col);
/* Moves list e into out (sorted by file and position when sort). */
void cfg_elist_export(struct loader *L, struct elist *e, struct config_errors *out, bool sort);

/* ---- small helpers (NULL with L->oom set when memory runs out) ---- */

char *cfg_ldup(struct loader *L, const char *s);
char *cfg_lfmt(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *cfg_jpath(struct loader *L, const char *base, const char *key);
char *cfg_resolve_path(struct loader *L, const char *p);
/* Reads a whole file (at most CONFIG_MAX_FILE) into *out; 0 or a negative errno. */
int cfg_read_file(const char *path, char **out, size_t *len, struct stat *st);
const char *cfg_file_error(int r);
bool cfg_chars_ok(const char *s, const char *extra);
const char *cfg_placeholder_problem(const char *s);
/* s with ${productKey}/${deviceName} replaced. */
char *cfg_expand(struct loader *L, const char *s, const char *pk, const char *dn);
const char *cfg_json_type_name(const json_t *v);
void cfg_free_strv(char **v, size_t n);
/* A user or group name: up to 64 of [A-Za-z0-9_.-$]. */
bool cfg_valid_name(const char *s);

/* ---- typed readers: report at path and return false when v is not what is asked ---- */

bool cfg_j_str(struct loader *L, json_t *v, const char *path, const char **out);
bool cfg_j_nonempty(struct loader *L, json_t *v, const char *path, const char **out);
bool cfg_j_object(struct loader *L, json_t *v, const char *path);

/* ---- choices: a string that must be one of a few names ---- */

struct choice {
    const char *name;
    int value;
};
bool cfg_choice_find(const struct choice *c, const char *s, int *out);
/* An integer in [min, max] / one of choices, for K_FN handlers (the key table's readers). */
bool cfg_j_int(struct loader *L, json_t *v, const char *path, long long min, long long max,
               long long *out);
bool cfg_j_choice(struct loader *L, json_t *v, const char *path, const struct choice *choices,
                  int *out);
void cfg_choice_names(const struct choice *c, char *buf, size_t len);

/* ---- walking an object through a table of its keys ---- */

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
    /* Reload: a changed value takes effect only after a restart (SIGHUP applies the rest and
     * names these). A section (sub: its table) is compared key by key; same() compares a key
     * whose value is not a plain field (K_FN, K_SKIP). */
    bool restart;
    const struct key *sub;
    bool (*same)(const struct config *a, const struct config *b);
};

#define CF(f) .off = offsetof(struct config, f), .size = sizeof(((struct config *)0)->f)

/* A key the table does not list; returns false when it is not one either. */
typedef bool (*other_fn)(struct loader *L, void *ctx, const char *k, json_t *v, const char *path);

/*
 * Reads the members of object o (at path base): "_comment" is skipped, a key of the table keys
 * (may be NULL) is read by its kind, any other goes to other (may be NULL), and one that is none
 * of these is reported as an unknown key. Returns false when some key was unknown.
 */
bool cfg_walk(struct loader *L, json_t *o, const char *base, const struct key *keys, other_fn other,
              void *ctx);

/* ---- devices (config_devices.c) ---- */

/* "cloud": its own keys (cloud_keys) and the per-device keys it sets for every device. o may
 * be NULL. */
void cfg_parse_cloud(struct loader *L, json_t *o, const struct key *cloud_keys);
void cfg_parse_inline_devices(struct loader *L, json_t *arr);
/* The CSV devices file, already read into buf (modified in place). */
void cfg_parse_devices_file(struct loader *L, char *buf, size_t len);

#endif
