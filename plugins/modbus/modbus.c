/*
 * modbus: an aligw plugin that polls Modbus TCP and RTU slaves with libmodbus and turns
 * registers and coils into thing-model properties. One thread per bus (a TCP endpoint or a
 * serial line): the devices on a bus are polled one after the other, as a serial bus requires,
 * and nothing here ever runs on the daemon's loop except parsing a property set and queueing it
 * for the bus thread. Contiguous registers of one function are read in one request. A device
 * whose slave does not answer is put in error through host->set_device_state and cleared on
 * the next good read; a lost connection is re-opened with exponential backoff. A serial line
 * has one owner: one thread per line within a plugin, two buses naming one device are refused,
 * and the open line is flock()ed so a second poller (another plugin entry, another process)
 * gets "owned by another poller" instead of interleaving frames. On a serial line a slave that
 * does not answer (or answers with a bad CRC) fails only its own device: the line stays open.
 * request_gap_ms keeps a pause between the end of one request and the next on a bus (RS-485
 * turnaround, converters; RTU defaults to 3.5 characters at the line's baud rate, which
 * libmodbus does not keep by itself); the first polls of a bus's devices are spread over their
 * interval ("stagger") so that many slaves are not asked in the same instant.
 *
 * Config:
 *   {"interval_ms": 1000,            default poll interval
 *    "report": "change",             "change" (changed values only) or "always"
 *    "stagger": true,                spread the first polls of a bus's devices over the interval
 *    "buses": {"plc": {"type": "tcp", "host": "127.0.0.1", "port": 502, "timeout_ms": 1000,
 *                      "reconnect_min_ms": 500, "reconnect_max_ms": 30000,
 *                      "request_gap_ms": 0},
 *              "rs485": {"type": "rtu", "device": "/dev/ttyUSB0", "baud": 9600, "parity": "N",
 *                        "data_bits": 8, "stop_bits": 1, "timeout_ms": 200,
 *                        "request_gap_ms": 5 (default: 3.5 characters)}},
 *    "templates": {"meter": [REGISTER, ...]},
 *    "devices": {"pk/dn": {"bus": "plc", "slave": 1, "interval_ms": 1000,
 *                          "registers": [REGISTER, ...] | "template": "meter"}}}
 *   REGISTER: {"id": "temperature", "address": 0, "function": "holding" | "input" | "coil" |
 *              "discrete", "type": "int16" | "uint16" | "int32" | "uint32" | "float32" | "bool",
 *              "word_order": "ABCD" | "CDAB" | "BADC" | "DCBA" (16-bit: "AB" | "BA"),
 *              "scale": 1, "offset": 0, "decimals": N, "writable": false}
 *   value = raw * scale + offset; a property set writes (value - offset) / scale.
 */
#include <aligw/plugin.h>

#include "plugin_util.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <modbus.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

enum fn { FN_HOLDING, FN_INPUT, FN_COIL, FN_DISCRETE };
enum type { T_BOOL, T_INT16, T_UINT16, T_INT32, T_UINT32, T_FLOAT32 };

struct reg {
    char id[65];
    enum fn fn;
    enum type type;
    int addr, nregs;
    char order[5];
    double scale, offset;
    int decimals; /* -1: automatic */
    bool writable;
    bool has_last;
    double last;
};

struct block {
    enum fn fn;
    int start, count;
    uint16_t *words; /* registers */
    uint8_t *bits;   /* coils, discrete inputs */
};

struct bus;

struct mdev {
    const struct aligw_device *dev;
    struct bus *bus;
    int slave;
    struct reg *regs;
    size_t n_regs;
    struct block *blocks;
    size_t n_blocks;
    long interval_ms;
    double next_due;
    bool ok;          /* last state reported (starts ok) */
    char reason[200]; /* and its reason */
    bool report_all;  /* next good poll reports every value */
};

struct write_req {
    struct write_req *next;
    struct mdev *d;
    char req_id[32];
    size_t n;
    struct {
        struct reg *r;
        uint16_t w[2];
        bool bit;
    } items[];
};

struct bus {
    char name[64];
    struct mb *mb;
    bool rtu;
    char host[256], port[16], device[256];
    int baud, data_bits, stop_bits;
    char parity;
    long timeout_ms, backoff_min_ms, backoff_max_ms, gap_ms;
    double last_io; /* end of the last request (plugin_now_s), for request_gap_ms */
    modbus_t *ctx;
    bool connected;
    double backoff;
    pthread_t thread;
    bool started;
    struct mdev **devs;
    size_t n_devs;
    struct write_req *writes, **writes_tail; /* under mb->lock */
};

struct mb {
    const struct aligw_host *host;
    struct bus *buses;
    size_t n_buses;
    struct mdev *devs;
    size_t n_devs;
    bool report_always, stagger;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
};

/* ---- config ---- */

static const char *get_str(json_t *o, const char *key, const char *def)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : v ? NULL : def;
}

static int parse_reg(json_t *o, struct reg *r, const char *w, char *err, size_t len)
{
    const char *id = get_str(o, "id", NULL), *fn = get_str(o, "function", "holding"), *type, *order;
    long addr, dec;
    json_t *wr;

    memset(r, 0, sizeof *r);
    if (!json_is_object(o))
        return plugin_fail(err, len, "%s: must be an object", w);
    if (!id || !*id || strlen(id) >= sizeof r->id)
        return plugin_fail(err, len, "%s: \"id\" must be a string of 1..64 characters", w);
    snprintf(r->id, sizeof r->id, "%s", id);
    if (!fn)
        return plugin_fail(err, len, "%s: \"function\" must be a string", w);
    if (strcmp(fn, "holding") == 0)
        r->fn = FN_HOLDING;
    else if (strcmp(fn, "input") == 0)
        r->fn = FN_INPUT;
    else if (strcmp(fn, "coil") == 0)
        r->fn = FN_COIL;
    else if (strcmp(fn, "discrete") == 0)
        r->fn = FN_DISCRETE;
    else
        return plugin_fail(err, len, "%s: \"function\" must be holding, input, coil or discrete",
                           w);
    if (plugin_get_int(o, "address", -1, 0, 65535, &addr, w, err, len) < 0)
        return -EINVAL;
    if (addr < 0)
        return plugin_fail(err, len, "%s: \"address\" is required", w);
    r->addr = (int)addr;
    bool bits = r->fn == FN_COIL || r->fn == FN_DISCRETE;
    type = get_str(o, "type", bits ? "bool" : "uint16");
    if (!type)
        return plugin_fail(err, len, "%s: \"type\" must be a string", w);
    static const char *const tn[] = {"bool", "int16", "uint16", "int32", "uint32", "float32"};
    r->type = (enum type) - 1;
    for (int i = 0; i < 6; i++)
        if (strcmp(type, tn[i]) == 0)
            r->type = (enum type)i;
    if ((int)r->type < 0)
        return plugin_fail(err, len,
                           "%s: \"type\" must be bool, int16, uint16, int32, uint32 or float32", w);
    if (bits != (r->type == T_BOOL))
        return plugin_fail(err, len, "%s: coils and discrete inputs are bool, registers are not",
                           w);
    r->nregs = r->type >= T_INT32 ? 2 : 1;
    if (r->addr + r->nregs - 1 > 65535)
        return plugin_fail(err, len, "%s: \"address\" too high for the type", w);
    order = get_str(o, "word_order", r->nregs == 2 ? "ABCD" : "AB");
    if (!order || strlen(order) != (size_t)(r->nregs * 2))
        return plugin_fail(err, len, "%s: \"word_order\" must be %s", w,
                           r->nregs == 2 ? "ABCD, CDAB, BADC or DCBA" : "AB or BA");
    if (r->nregs == 2 && strcmp(order, "ABCD") && strcmp(order, "CDAB") && strcmp(order, "BADC") &&
        strcmp(order, "DCBA"))
        return plugin_fail(err, len, "%s: \"word_order\" must be ABCD, CDAB, BADC or DCBA", w);
    if (r->nregs == 1 && strcmp(order, "AB") && strcmp(order, "BA"))
        return plugin_fail(err, len, "%s: \"word_order\" must be AB or BA", w);
    snprintf(r->order, sizeof r->order, "%s", order);
    if (plugin_get_num(o, "scale", 1, &r->scale, w, err, len) ||
        plugin_get_num(o, "offset", 0, &r->offset, w, err, len) ||
        plugin_get_int(o, "decimals", -1, -1, 10, &dec, w, err, len))
        return -EINVAL;
    if (r->scale == 0 || !isfinite(r->scale) || !isfinite(r->offset))
        return plugin_fail(err, len, "%s: \"scale\" must be a non-zero number", w);
    r->decimals = (int)dec;
    wr = json_object_get(o, "writable");
    if (wr && !json_is_boolean(wr))
        return plugin_fail(err, len, "%s: \"writable\" must be true or false", w);
    r->writable = json_is_true(wr);
    if (r->writable && (r->fn == FN_INPUT || r->fn == FN_DISCRETE))
        return plugin_fail(err, len, "%s: input registers and discrete inputs cannot be writable",
                           w);
    return 0;
}

static int cmp_reg(const void *a, const void *b)
{
    const struct reg *x = a, *y = b;
    if (x->fn != y->fn)
        return (int)x->fn - (int)y->fn;
    return x->addr - y->addr;
}

/* Sorts regs and groups contiguous ones of one function into blocks. */
static int make_blocks(struct mdev *d)
{
    size_t cap = d->n_regs ? d->n_regs : 1;
    qsort(d->regs, d->n_regs, sizeof *d->regs, cmp_reg);
    d->blocks = calloc(cap, sizeof *d->blocks);
    if (!d->blocks)
        return -ENOMEM;
    for (size_t i = 0; i < d->n_regs; i++) {
        struct reg *r = &d->regs[i];
        struct block *b = d->n_blocks ? &d->blocks[d->n_blocks - 1] : NULL;
        int limit = (r->fn == FN_COIL || r->fn == FN_DISCRETE) ? MODBUS_MAX_READ_BITS
                                                               : MODBUS_MAX_READ_REGISTERS;
        int end = r->addr + r->nregs;
        if (b && b->fn == r->fn && r->addr <= b->start + b->count && end - b->start <= limit) {
            if (end > b->start + b->count)
                b->count = end - b->start;
            continue;
        }
        b = &d->blocks[d->n_blocks++];
        b->fn = r->fn;
        b->start = r->addr;
        b->count = r->nregs;
    }
    for (size_t i = 0; i < d->n_blocks; i++) {
        struct block *b = &d->blocks[i];
        if (b->fn == FN_COIL || b->fn == FN_DISCRETE)
            b->bits = calloc((size_t)b->count, 1);
        else
            b->words = calloc((size_t)b->count, sizeof *b->words);
        if (!b->bits && !b->words)
            return -ENOMEM;
    }
    return 0;
}

static int parse_regs(json_t *arr, struct mdev *d, const char *where, char *err, size_t len)
{
    size_t i, n = json_array_size(arr);
    json_t *o;
    char w[300];
    if (!json_is_array(arr) || n == 0 || n > 4000)
        return plugin_fail(err, len, "%s: \"registers\" must be an array of 1..4000 registers",
                           where);
    d->regs = calloc(n, sizeof *d->regs);
    if (!d->regs)
        return -ENOMEM;
    json_array_foreach(arr, i, o)
    {
        snprintf(w, sizeof w, "%s: registers[%zu]", where, i);
        if (parse_reg(o, &d->regs[i], w, err, len) < 0)
            return -EINVAL;
        d->n_regs = i + 1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->regs[j].id, d->regs[i].id) == 0)
                return plugin_fail(err, len, "%s: duplicate id \"%s\"", w, d->regs[i].id);
    }
    return 0;
}

static int parse_bus(json_t *o, const char *name, struct bus *b, char *err, size_t len)
{
    char w[120];
    const char *type = get_str(o, "type", "tcp"), *s;
    long v;
    snprintf(w, sizeof w, "config: buses.%s", name);
    if (!json_is_object(o) || strlen(name) >= sizeof b->name)
        return plugin_fail(err, len, "%s: must be an object (name up to 63 characters)", w);
    snprintf(b->name, sizeof b->name, "%s", name);
    if (plugin_get_int(o, "timeout_ms", 1000, 10, 60000, &b->timeout_ms, w, err, len) ||
        plugin_get_int(o, "reconnect_min_ms", 500, 10, 3600000, &b->backoff_min_ms, w, err, len) ||
        plugin_get_int(o, "reconnect_max_ms", 30000, 10, 3600000, &b->backoff_max_ms, w, err, len))
        return -EINVAL;
    if (type && strcmp(type, "tcp") == 0) {
        s = get_str(o, "host", "127.0.0.1");
        if (!s || !*s || strlen(s) >= sizeof b->host)
            return plugin_fail(err, len, "%s: \"host\" must be a host name or address", w);
        snprintf(b->host, sizeof b->host, "%s", s);
        if (plugin_get_int(o, "port", 502, 1, 65535, &v, w, err, len))
            return -EINVAL;
        snprintf(b->port, sizeof b->port, "%ld", v);
    } else if (type && strcmp(type, "rtu") == 0) {
        b->rtu = true;
        s = get_str(o, "device", NULL);
        if (!s || !*s || strlen(s) >= sizeof b->device)
            return plugin_fail(err, len, "%s: \"device\" (serial port path) is required", w);
        snprintf(b->device, sizeof b->device, "%s", s);
        s = get_str(o, "parity", "N");
        if (!s || strlen(s) != 1 || !strchr("NEO", s[0]))
            return plugin_fail(err, len, "%s: \"parity\" must be N, E or O", w);
        b->parity = s[0];
        if (plugin_get_int(o, "baud", 9600, 300, 4000000, &v, w, err, len))
            return -EINVAL;
        b->baud = (int)v;
        if (plugin_get_int(o, "data_bits", 8, 5, 8, &v, w, err, len))
            return -EINVAL;
        b->data_bits = (int)v;
        if (plugin_get_int(o, "stop_bits", 1, 1, 2, &v, w, err, len))
            return -EINVAL;
        b->stop_bits = (int)v;
    } else {
        return plugin_fail(err, len, "%s: \"type\" must be tcp or rtu", w);
    }
    /* 3.5 characters of 11 bits on a serial line, rounded up; nothing on TCP */
    long gap = b->rtu ? (38500 + b->baud - 1) / b->baud : 0;
    if (plugin_get_int(o, "request_gap_ms", gap < 1 && b->rtu ? 1 : gap, 0, 10000, &b->gap_ms, w,
                       err, len))
        return -EINVAL;
    return 0;
}

static void mdev_free(struct mdev *d)
{
    for (size_t i = 0; i < d->n_blocks; i++) {
        free(d->blocks[i].words);
        free(d->blocks[i].bits);
    }
    free(d->blocks);
    free(d->regs);
    d->blocks = NULL;
    d->regs = NULL;
}

static void mb_free(struct mb *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_devs; i++)
        mdev_free(&m->devs[i]);
    for (size_t i = 0; i < m->n_buses; i++) {
        struct bus *b = &m->buses[i];
        while (b->writes) {
            struct write_req *w = b->writes;
            b->writes = w->next;
            free(w);
        }
        if (b->ctx)
            modbus_free(b->ctx);
        free(b->devs);
    }
    free(m->buses);
    free(m->devs);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Parses and checks text; with devs, builds m's buses and devices for devs[0..n). */
static int parse(const char *text, struct mb *m, const struct aligw_device *devs, size_t n,
                 char *err, size_t len)
{
    json_error_t je;
    json_t *root = json_loads(text, 0, &je), *buses, *tpls, *devices, *o;
    const char *k, *report;
    long iv;
    int rc = -EINVAL;
    struct mb tmp = {0};

    if (!m)
        m = &tmp;
    if (!root)
        return plugin_fail(err, len, "config: invalid JSON at line %d: %s", je.line, je.text);
    if (!json_is_object(root)) {
        plugin_fail(err, len, "config: must be an object");
        goto out;
    }
    if (plugin_get_int(root, "interval_ms", 1000, 10, 3600000, &iv, "config", err, len))
        goto out;
    report = get_str(root, "report", "change");
    if (!report || (strcmp(report, "change") && strcmp(report, "always"))) {
        plugin_fail(err, len, "config: \"report\" must be change or always");
        goto out;
    }
    m->report_always = strcmp(report, "always") == 0;
    json_t *st = json_object_get(root, "stagger");
    if (st && !json_is_boolean(st)) {
        plugin_fail(err, len, "config: \"stagger\" must be true or false");
        goto out;
    }
    m->stagger = !st || json_is_true(st);
    buses = json_object_get(root, "buses");
    tpls = json_object_get(root, "templates");
    devices = json_object_get(root, "devices");
    if (!json_is_object(buses) || json_object_size(buses) == 0) {
        plugin_fail(err, len, "config: \"buses\" must be an object with at least one bus");
        goto out;
    }
    if (tpls && !json_is_object(tpls)) {
        plugin_fail(err, len, "config: \"templates\" must be an object of register arrays");
        goto out;
    }
    if (!json_is_object(devices)) {
        plugin_fail(err, len, "config: \"devices\" must be an object keyed by \"pk/dn\"");
        goto out;
    }
    m->buses = calloc(json_object_size(buses), sizeof *m->buses);
    if (!m->buses) {
        rc = -ENOMEM;
        goto out;
    }
    json_object_foreach(buses, k, o)
    {
        struct bus *b = &m->buses[m->n_buses];
        if (parse_bus(o, k, b, err, len) < 0)
            goto out;
        for (size_t j = 0; b->rtu && j < m->n_buses; j++) {
            if (m->buses[j].rtu && !strcmp(m->buses[j].device, b->device)) {
                plugin_fail(err, len,
                            "config: buses.%s: serial line %s is already bus \"%s\" (one bus per "
                            "line: put both devices on it)",
                            k, b->device, m->buses[j].name);
                goto out;
            }
        }
        b->mb = m;
        b->writes_tail = &b->writes;
        m->n_buses++;
    }
    /* every device entry is checked, served or not */
    json_object_foreach(devices, k, o)
    {
        char w[200];
        struct mdev d = {0};
        const char *bus = get_str(o, "bus", NULL), *tpl = get_str(o, "template", NULL);
        json_t *regs = json_object_get(o, "registers");
        long slave;
        struct bus *b = NULL;
        size_t idx = n;

        snprintf(w, sizeof w, "config: devices.%s", k);
        if (!json_is_object(o)) {
            plugin_fail(err, len, "%s: must be an object", w);
            goto out;
        }
        for (size_t i = 0; i < m->n_buses; i++)
            if (bus && strcmp(m->buses[i].name, bus) == 0)
                b = &m->buses[i];
        if (!b && !bus && m->n_buses == 1)
            b = &m->buses[0];
        if (!b) {
            plugin_fail(err, len, "%s: \"bus\" must name one of \"buses\"", w);
            goto out;
        }
        if (plugin_get_int(o, "slave", 1, 0, 255, &slave, w, err, len) ||
            plugin_get_int(o, "interval_ms", iv, 10, 3600000, &d.interval_ms, w, err, len))
            goto out;
        if (tpl && regs) {
            plugin_fail(err, len, "%s: give \"registers\" or \"template\", not both", w);
            goto out;
        }
        if (tpl) {
            regs = json_object_get(tpls, tpl);
            if (!regs) {
                plugin_fail(err, len, "%s: no template \"%s\"", w, tpl);
                goto out;
            }
        }
        rc = parse_regs(regs, &d, w, err, len);
        if (rc == 0)
            rc = make_blocks(&d);
        if (rc < 0) {
            mdev_free(&d);
            goto out;
        }
        rc = -EINVAL;
        d.slave = (int)slave;
        d.bus = b;
        for (size_t i = 0; devs && i < n; i++) {
            const char *slash = strchr(k, '/');
            if (slash && strlen(devs[i].product_key) == (size_t)(slash - k) &&
                strncmp(devs[i].product_key, k, (size_t)(slash - k)) == 0 &&
                strcmp(devs[i].device_name, slash + 1) == 0)
                idx = i;
        }
        if (idx == n) {
            mdev_free(&d);
            continue;
        }
        d.dev = &devs[idx];
        d.ok = true;
        d.report_all = true;
        m->devs[idx] = d;
    }
    rc = 0;
out:
    if (m == &tmp)
        free(tmp.buses);
    json_decref(root);
    return rc;
}

static int mb_check_config(const char *config_json, char *err, size_t err_len)
{
    return parse(config_json, NULL, NULL, 0, err, err_len);
}

/* ---- values ---- */

static uint32_t u32_of(const struct reg *r, const uint16_t *w)
{
    uint8_t wire[4] = {w[0] >> 8, w[0] & 0xff, w[1] >> 8, w[1] & 0xff}, v[4];
    for (int i = 0; i < 4; i++)
        v[r->order[i] - 'A'] = wire[i];
    return (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
}

static void words_of(const struct reg *r, uint32_t u, uint16_t *w)
{
    uint8_t v[4] = {u >> 24, (u >> 16) & 0xff, (u >> 8) & 0xff, u & 0xff}, wire[4];
    for (int i = 0; i < 4; i++)
        wire[i] = v[r->order[i] - 'A'];
    w[0] = (uint16_t)(wire[0] << 8 | wire[1]);
    w[1] = (uint16_t)(wire[2] << 8 | wire[3]);
}

/* Raw value of r from its words (registers) or bit. */
static double raw_value(const struct reg *r, const uint16_t *w, uint8_t bit)
{
    uint16_t u16;
    uint32_t u32;
    float f;
    switch (r->type) {
    case T_BOOL:
        return bit ? 1 : 0;
    case T_INT16:
    case T_UINT16:
        u16 = r->order[0] == 'B' ? (uint16_t)(w[0] >> 8 | w[0] << 8) : w[0];
        return r->type == T_INT16 ? (double)(int16_t)u16 : (double)u16;
    case T_INT32:
        return (double)(int32_t)u32_of(r, w);
    case T_UINT32:
        return (double)u32_of(r, w);
    case T_FLOAT32:
        u32 = u32_of(r, w);
        memcpy(&f, &u32, sizeof f);
        return (double)f;
    }
    return 0;
}

static bool integral(const struct reg *r)
{
    return r->type != T_FLOAT32 && r->scale == 1 && r->offset == floor(r->offset) &&
           r->decimals <= 0;
}

static json_t *json_value(const struct reg *r, double v)
{
    char buf[64];
    if (integral(r))
        return json_integer((json_int_t)v);
    if (r->decimals >= 0) {
        double f = pow(10, r->decimals);
        return json_real(round(v * f) / f);
    }
    /* float32 carries ~7 significant digits; scaled integers need no more than 9 */
    snprintf(buf, sizeof buf, "%.*g", r->type == T_FLOAT32 ? 7 : 9, v);
    return json_real(strtod(buf, NULL));
}

/* Inverse scaling into words; -ERANGE when the value does not fit. */
static int encode(const struct reg *r, double value, uint16_t *w, bool *bit)
{
    double raw = (value - r->offset) / r->scale;
    uint32_t u;
    float f;
    if (!isfinite(raw))
        return -ERANGE;
    if (r->type != T_FLOAT32)
        raw = round(raw);
    switch (r->type) {
    case T_BOOL:
        if (raw != 0 && raw != 1)
            return -ERANGE;
        *bit = raw != 0;
        return 0;
    case T_INT16:
    case T_UINT16:
        if (r->type == T_INT16 ? (raw < -32768 || raw > 32767) : (raw < 0 || raw > 65535))
            return -ERANGE;
        w[0] = (uint16_t)(int32_t)raw;
        if (r->order[0] == 'B')
            w[0] = (uint16_t)(w[0] >> 8 | w[0] << 8);
        return 0;
    case T_INT32:
        if (raw < -2147483648.0 || raw > 2147483647.0)
            return -ERANGE;
        u = (uint32_t)(int32_t)raw;
        break;
    case T_UINT32:
        if (raw < 0 || raw > 4294967295.0)
            return -ERANGE;
        u = (uint32_t)raw;
        break;
    case T_FLOAT32:
        f = (float)raw;
        memcpy(&u, &f, sizeof u);
        break;
    default:
        return -ERANGE;
    }
    words_of(r, u, w);
    return 0;
}

/* ---- bus thread ---- */

static void set_state(struct mb *m, struct mdev *d, bool ok, const char *reason)
{
    /* a change of state, or a new reason for the error (timeout, then bad CRC...) */
    if (d->ok == ok && (ok || strcmp(d->reason, reason) == 0))
        return;
    d->ok = ok;
    snprintf(d->reason, sizeof d->reason, "%s", reason);
    if (ok)
        d->report_all = true;
    m->host->set_device_state(m->host, d->dev, ok, reason);
    plugin_log_dev(m->host, ok ? ALIGW_LOG_NOTICE : ALIGW_LOG_WARNING, d->dev, "%s", reason);
}

static void bus_close(struct bus *b)
{
    if (b->ctx) {
        modbus_close(b->ctx);
        modbus_free(b->ctx);
        b->ctx = NULL;
    }
    b->connected = false;
}

static const char *bus_where(const struct bus *b, char *buf, size_t len)
{
    if (b->rtu)
        snprintf(buf, len, "%s", b->device);
    else
        snprintf(buf, len, "%s:%s", b->host, b->port);
    return buf;
}

static int bus_connect(struct bus *b)
{
    if (b->rtu)
        b->ctx = modbus_new_rtu(b->device, b->baud, b->parity, b->data_bits, b->stop_bits);
    else
        b->ctx = modbus_new_tcp_pi(b->host, b->port);
    if (!b->ctx)
        return -errno;
    modbus_set_response_timeout(b->ctx, (uint32_t)(b->timeout_ms / 1000),
                                (uint32_t)(b->timeout_ms % 1000) * 1000);
    if (modbus_connect(b->ctx) < 0) {
        int e = errno;
        modbus_free(b->ctx);
        b->ctx = NULL;
        return -e;
    }
    if (b->rtu && flock(modbus_get_socket(b->ctx), LOCK_EX | LOCK_NB) < 0) {
        int e = errno == EWOULDBLOCK ? EBUSY : errno;
        modbus_close(b->ctx);
        modbus_free(b->ctx);
        b->ctx = NULL;
        return -e;
    }
    b->connected = true;
    b->last_io = 0;
    return 0;
}

/* Waits out request_gap_ms since the end of the bus's last request. */
static void bus_gap(struct bus *b)
{
    double wait = b->last_io + b->gap_ms / 1000.0 - plugin_now_s();
    if (b->gap_ms > 0 && b->last_io > 0 && wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void bus_done(struct bus *b)
{
    b->last_io = plugin_now_s();
}

/* A transport error (not a Modbus exception from a live slave): the connection is suspect. On
 * a serial line only the port failing counts: a silent slave or a garbled frame concerns that
 * slave (the others on the line keep being polled); stray bytes are flushed instead. */
static bool transport_error(struct bus *b, int e)
{
    if (b->rtu) {
        if (b->ctx && (e == ETIMEDOUT || e == EMBBADCRC || e == EMBBADDATA || e == EMBBADSLAVE))
            modbus_flush(b->ctx);
        return e == EIO || e == EBADF || e == ENXIO || e == ENODEV;
    }
    return e < MODBUS_ENOBASE || e == EMBBADCRC || e == EMBBADDATA || e == EMBBADEXC ||
           e == EMBMDATA || e == EMBBADSLAVE;
}

/* Reads every block of d; builds and posts the changed values. Returns 0 or -errno. */
static int poll_dev(struct mb *m, struct bus *b, struct mdev *d)
{
    json_t *params;
    char where[300], reason[400];
    int rc = 0;

    modbus_set_slave(b->ctx, d->slave);
    for (size_t i = 0; i < d->n_blocks; i++) {
        struct block *k = &d->blocks[i];
        bus_gap(b);
        switch (k->fn) {
        case FN_HOLDING:
            rc = modbus_read_registers(b->ctx, k->start, k->count, k->words);
            break;
        case FN_INPUT:
            rc = modbus_read_input_registers(b->ctx, k->start, k->count, k->words);
            break;
        case FN_COIL:
            rc = modbus_read_bits(b->ctx, k->start, k->count, k->bits);
            break;
        case FN_DISCRETE:
            rc = modbus_read_input_bits(b->ctx, k->start, k->count, k->bits);
            break;
        }
        bus_done(b);
        if (rc < 0) {
            int e = errno;
            snprintf(reason, sizeof reason, "modbus slave %d at %s not answering: %s", d->slave,
                     bus_where(b, where, sizeof where), modbus_strerror(e));
            set_state(m, d, false, reason);
            return -e;
        }
    }
    params = json_object();
    for (size_t i = 0, bi = 0; i < d->n_regs; i++) {
        struct reg *r = &d->regs[i];
        while (bi < d->n_blocks &&
               !(d->blocks[bi].fn == r->fn && r->addr >= d->blocks[bi].start &&
                 r->addr + r->nregs <= d->blocks[bi].start + d->blocks[bi].count))
            bi++;
        if (bi == d->n_blocks)
            break; /* cannot happen: every register is in a block */
        struct block *k = &d->blocks[bi];
        int off = r->addr - k->start;
        double v = raw_value(r, k->words ? &k->words[off] : NULL, k->bits ? k->bits[off] : 0);
        v = v * r->scale + r->offset;
        if (m->report_always || d->report_all || !r->has_last || r->last != v)
            json_object_set_new(params, r->id, json_value(r, v));
        r->last = v;
        r->has_last = true;
    }
    set_state(m, d, true, "modbus slave answering");
    d->report_all = false;
    /* the platform takes at most 200 properties per post: a long register map goes in parts */
    const char *key;
    json_t *val, *part = json_object();
    size_t left = json_object_size(params);
    json_object_foreach(params, key, val)
    {
        json_object_set(part, key, val);
        left--;
        if (json_object_size(part) < 200 && left > 0)
            continue;
        char *text = json_dumps(part, JSON_COMPACT | JSON_REAL_PRECISION(16));
        if (text) {
            int prc = m->host->post_properties(m->host, d->dev, text, 0);
            if (prc < 0)
                plugin_log_dev(m->host, ALIGW_LOG_WARNING, d->dev, "post failed: %s",
                               strerror(-prc));
        }
        free(text);
        json_object_clear(part);
    }
    json_decref(part);
    json_decref(params);
    return 0;
}

static void do_write(struct mb *m, struct bus *b, struct write_req *w)
{
    int code = ALIGW_REPLY_OK;
    struct mdev *d = w->d;

    if (!b->connected) {
        code = ALIGW_REPLY_DEVICE_ERROR;
    } else {
        modbus_set_slave(b->ctx, d->slave);
        for (size_t i = 0; i < w->n && code == ALIGW_REPLY_OK; i++) {
            struct reg *r = w->items[i].r;
            int rc;
            bus_gap(b);
            if (r->fn == FN_COIL)
                rc = modbus_write_bit(b->ctx, r->addr, w->items[i].bit);
            else if (r->nregs == 1)
                rc = modbus_write_register(b->ctx, r->addr, w->items[i].w[0]);
            else
                rc = modbus_write_registers(b->ctx, r->addr, 2, w->items[i].w);
            bus_done(b);
            if (rc < 0) {
                plugin_log_dev(m->host, ALIGW_LOG_WARNING, d->dev, "writing %s failed: %s", r->id,
                               modbus_strerror(errno));
                code = ALIGW_REPLY_DEVICE_ERROR;
            }
        }
    }
    m->host->reply(m->host, d->dev, w->req_id, code, NULL);
    d->next_due = 0; /* read back now: the new value is reported */
}

/* Under m->lock: takes the first queued write off b and does it with the lock released. */
static void write_next(struct mb *m, struct bus *b)
{
    struct write_req *w = b->writes;
    b->writes = w->next;
    if (!b->writes)
        b->writes_tail = &b->writes;
    pthread_mutex_unlock(&m->lock);
    do_write(m, b, w);
    free(w);
    pthread_mutex_lock(&m->lock);
}

static void wait_until(struct mb *m, double t)
{
    double w = t - plugin_now_s();
    plugin_cond_wait_s(&m->cond, &m->lock, w > 3600 ? 3600 : w);
}

static void *bus_run(void *arg)
{
    struct bus *b = arg;
    struct mb *m = b->mb;
    double retry_at = 0;
    char where[300], reason[400];

    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        double t = plugin_now_s(), next = t + 3600;
        if (!b->connected) {
            if (t < retry_at) {
                /* a set while disconnected fails at once */
                while (b->writes)
                    write_next(m, b);
                wait_until(m, retry_at);
                continue;
            }
            pthread_mutex_unlock(&m->lock);
            int rc = bus_connect(b);
            pthread_mutex_lock(&m->lock);
            if (rc < 0) {
                snprintf(reason, sizeof reason, "modbus %s unreachable: %s",
                         bus_where(b, where, sizeof where), modbus_strerror(-rc));
                for (size_t i = 0; i < b->n_devs; i++)
                    set_state(m, b->devs[i], false, reason);
                b->backoff = b->backoff ? b->backoff * 2 : b->backoff_min_ms / 1000.0;
                if (b->backoff > b->backoff_max_ms / 1000.0)
                    b->backoff = b->backoff_max_ms / 1000.0;
                /* jitter: 75..100 % of the backoff */
                retry_at =
                    plugin_now_s() + b->backoff * (0.75 + 0.25 * (double)(rand() % 1000) / 1000);
                continue;
            }
            b->backoff = 0;
            /* the first polls now, spread over each device's interval unless stagger is off */
            for (size_t i = 0; i < b->n_devs; i++)
                b->devs[i]->next_due = m->stagger && i ? t + b->devs[i]->interval_ms / 1000.0 *
                                                                 (double)i / (double)b->n_devs
                                                       : 0;
            continue;
        }
        if (b->writes) {
            write_next(m, b);
            continue;
        }
        for (size_t i = 0; i < b->n_devs && !m->stop && b->connected && !b->writes; i++) {
            struct mdev *d = b->devs[i];
            if (d->next_due <= t) {
                double due = d->next_due;
                pthread_mutex_unlock(&m->lock);
                int rc = poll_dev(m, b, d);
                pthread_mutex_lock(&m->lock);
                d->next_due = (due > 0 ? due : t) + d->interval_ms / 1000.0;
                if (d->next_due < plugin_now_s())
                    d->next_due = plugin_now_s() + d->interval_ms / 1000.0;
                if (rc < 0 && transport_error(b, -rc)) {
                    pthread_mutex_unlock(&m->lock);
                    bus_close(b);
                    pthread_mutex_lock(&m->lock);
                    retry_at = plugin_now_s() + b->backoff_min_ms / 1000.0;
                    /* every device on the bus is unreachable now */
                    snprintf(reason, sizeof reason, "modbus %s: connection lost",
                             bus_where(b, where, sizeof where));
                    for (size_t j = 0; j < b->n_devs; j++)
                        set_state(m, b->devs[j], false, reason);
                }
            }
            if (d->next_due < next)
                next = d->next_due;
        }
        if (b->connected && !b->writes && !m->stop)
            wait_until(m, next);
    }
    pthread_mutex_unlock(&m->lock);
    bus_close(b);
    return NULL;
}

/* ---- entry points ---- */

static void mb_destroy(void *inst)
{
    mb_free(inst);
}

static int mb_create(const struct aligw_host *host, const char *config_json,
                     const struct aligw_device *devices, size_t n_devices, void **instance)
{
    struct mb *m = calloc(1, sizeof *m);
    char err[300];
    int rc;

    *instance = NULL;
    if (!m)
        return -ENOMEM;
    m->host = host;
    pthread_mutex_init(&m->lock, NULL);
    plugin_cond_init(&m->cond);
    m->devs = calloc(n_devices ? n_devices : 1, sizeof *m->devs);
    m->n_devs = n_devices;
    if (!m->devs) {
        mb_free(m);
        return -ENOMEM;
    }
    rc = parse(config_json, m, devices, n_devices, err, sizeof err);
    if (rc < 0) {
        host->log(host, ALIGW_LOG_ERR, "%s", err);
        mb_free(m);
        return rc;
    }
    for (size_t i = 0; i < n_devices; i++) {
        struct mdev *d = &m->devs[i];
        if (!d->bus) {
            d->dev = &devices[i];
            host->set_device_state(host, d->dev, 0, "no entry in the modbus plugin's \"devices\"");
            continue;
        }
        struct bus *b = d->bus;
        struct mdev **v = realloc(b->devs, (b->n_devs + 1) * sizeof *v);
        if (!v) {
            mb_free(m);
            return -ENOMEM;
        }
        b->devs = v;
        b->devs[b->n_devs++] = d;
    }
    *instance = m;
    return 0;
}

static void mb_stop(void *inst)
{
    struct mb *m = inst;
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    for (size_t i = 0; i < m->n_buses; i++) {
        if (m->buses[i].started)
            pthread_join(m->buses[i].thread, NULL);
        m->buses[i].started = false;
    }
}

static int mb_start(void *inst)
{
    struct mb *m = inst;
    for (size_t i = 0; i < m->n_buses; i++) {
        if (m->buses[i].n_devs == 0)
            continue;
        if (pthread_create(&m->buses[i].thread, NULL, bus_run, &m->buses[i]) != 0) {
            mb_stop(m);
            return -EAGAIN;
        }
        m->buses[i].started = true;
    }
    return 0;
}

static struct reg *find_reg(struct mdev *d, const char *id)
{
    for (size_t i = 0; i < d->n_regs; i++)
        if (strcmp(d->regs[i].id, id) == 0)
            return &d->regs[i];
    return NULL;
}

static int mb_property_set(void *inst, const struct aligw_device *dev, const char *request_id,
                           const char *params_json)
{
    struct mb *m = inst;
    struct mdev *d = &m->devs[dev->index];
    json_t *params = json_loads(params_json, 0, NULL), *v;
    struct write_req *w = NULL;
    const char *k;
    size_t n = json_object_size(params), i = 0;

    if (!d->bus || !json_is_object(params) || n == 0 || strlen(request_id) >= sizeof w->req_id)
        goto bad;
    w = calloc(1, sizeof *w + n * sizeof w->items[0]);
    if (!w)
        goto bad;
    json_object_foreach(params, k, v)
    {
        struct reg *r = find_reg(d, k);
        double value;
        if (!r || !r->writable)
            goto bad;
        if (json_is_boolean(v))
            value = json_is_true(v);
        else if (json_is_number(v))
            value = json_number_value(v);
        else
            goto bad;
        if (encode(r, value, w->items[i].w, &w->items[i].bit) < 0)
            goto bad;
        w->items[i++].r = r;
    }
    w->n = i;
    w->d = d;
    snprintf(w->req_id, sizeof w->req_id, "%s", request_id);
    json_decref(params);
    pthread_mutex_lock(&m->lock);
    *d->bus->writes_tail = w;
    d->bus->writes_tail = &w->next;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return 0;
bad:
    free(w);
    json_decref(params);
    return m->host->reply(m->host, dev, request_id, ALIGW_REPLY_BAD_PARAMS, NULL);
}

ALIGW_PLUGIN_EXPORT const struct aligw_plugin aligw_plugin = {
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_plugin),
    .name = "modbus",
    .version = "1.0",
    .description = "Modbus TCP and RTU slaves polled into thing-model properties (libmodbus)",
    .check_config = mb_check_config,
    .create = mb_create,
    .start = mb_start,
    .stop = mb_stop,
    .destroy = mb_destroy,
    .on_property_set = mb_property_set,
};
