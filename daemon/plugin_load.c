/*
 * plugin_load: dlopen and descriptor checks shared by aligwd and aligw-plugin-host (see
 * plugin_load.h).
 */
#include "plugin_load.h"

#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

int plugin_refuse(char *err, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
    return ALIGW_EPLUGIN;
}

int plugin_load_so(const char *path, void **dl_out, struct aligw_plugin *desc, char *err,
                   size_t len)
{
    const struct aligw_plugin *d;
    void *dl;
    int rc;

    *dl_out = NULL;
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return plugin_refuse(err, len, "plugin %s: cannot load: %s", path, dlerror());
    d = dlsym(dl, "aligw_plugin");
    if (!d) {
        rc = plugin_refuse(err, len, "plugin %s: no symbol \"aligw_plugin\" (not an aligw plugin?)",
                           path);
        goto out;
    }
    if (d->abi_major != ALIGW_PLUGIN_ABI_MAJOR) {
        rc = plugin_refuse(err, len,
                           "plugin %s: built for plugin ABI %u.%u, this aligwd speaks %u.%u: "
                           "rebuild it against this version's aligw/plugin.h",
                           path, d->abi_major, d->abi_minor, ALIGW_PLUGIN_ABI_MAJOR,
                           ALIGW_PLUGIN_ABI_MINOR);
        goto out;
    }
    if (d->size < offsetof(struct aligw_plugin, destroy) + sizeof d->destroy) {
        rc = plugin_refuse(err, len, "plugin %s: descriptor too small (%u bytes)", path, d->size);
        goto out;
    }
    memset(desc, 0, sizeof *desc);
    memcpy(desc, d, d->size < sizeof *desc ? d->size : sizeof *desc);
    if (!desc->name || !*desc->name || !desc->create || !desc->start || !desc->stop ||
        !desc->destroy) {
        rc = plugin_refuse(
            err, len, "plugin %s: descriptor lacks name, create, start, stop or destroy", path);
        goto out;
    }
    *dl_out = dl;
    return 0;
out:
    dlclose(dl);
    return rc;
}

/* 1-64 printable bytes (or none, when may_be_empty). */
static bool fw_text_ok(const char *s, bool may_be_empty)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0)
        return may_be_empty;
    if (n > 64)
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

bool plugin_fw_result_ok(int64_t job_id, int step, const char *version)
{
    return step <= 0 && step >= -4 && job_id > 0 && fw_text_ok(version, true);
}

bool plugin_fw_version_ok(const char *module, const char *version)
{
    return fw_text_ok(version, false) && fw_text_ok(module, true);
}

#define EVENTS_MAX 32
#define EVENT_NAME_MAX 32

static bool event_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > EVENT_NAME_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || *s == '_'))
            return false;
    return true;
}

char *plugin_events_join(const char *const *events, char *skipped, size_t skipped_len)
{
    char buf[EVENTS_MAX * (EVENT_NAME_MAX + 1) + 2] = "";
    size_t n = 0, used = 0;
    if (skipped && skipped_len)
        skipped[0] = '\0';
    for (size_t i = 0; events && events[i]; i++) {
        const char *e = events[i];
        char probe[EVENT_NAME_MAX + 3];
        if (n < EVENTS_MAX && event_name_ok(e)) {
            snprintf(probe, sizeof probe, ",%s,", e);
            if (strstr(buf, probe))
                continue;
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s,", used ? "" : ",", e);
            n++;
        } else if (skipped && skipped_len) {
            size_t k = strlen(skipped);
            snprintf(skipped + k, skipped_len - k, "%s%.40s", k ? ", " : "", e);
        }
        if (i > 1024)
            break; /* a list that is not NULL-terminated, presumably */
    }
    return strdup(buf);
}

bool plugin_events_has(const char *joined, const char *kind)
{
    char probe[EVENT_NAME_MAX + 3];
    if (!joined || !kind || !event_name_ok(kind))
        return false;
    snprintf(probe, sizeof probe, ",%s,", kind);
    return strstr(joined, probe) != NULL;
}

int plugin_request_prepare(const char *request_json, const char *device_key, char **out)
{
    json_t *j, *dev;
    *out = NULL;
    if (!request_json || strlen(request_json) > PLUGIN_REQUEST_MAX)
        return -EINVAL;
    j = json_loads(request_json, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return -EINVAL;
    }
    dev = json_object_get(j, "device");
    if (dev && (!json_is_string(dev) || strcmp(json_string_value(dev), device_key) != 0)) {
        json_decref(j);
        return -EPERM;
    }
    if (json_object_set_new(j, "id", json_integer(1)) < 0) {
        json_decref(j);
        return -ENOMEM;
    }
    *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return *out ? 0 : -ENOMEM;
}
