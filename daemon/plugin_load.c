/*
 * plugin_load: dlopen and descriptor checks shared by aligwd and aligw-plugin-host (see
 * plugin_load.h).
 */
#include "plugin_load.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
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
