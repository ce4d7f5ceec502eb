/*
 * plugin_load: opens a plugin's shared object and validates its descriptor (ABI major, size,
 * required entry points). Used by aligwd for in-process plugins and --check-config, and by
 * aligw-plugin-host for the plugin it runs, so both refuse exactly the same files.
 */
#ifndef ALIGW_PLUGIN_LOAD_H
#define ALIGW_PLUGIN_LOAD_H

#include <aligw/plugin.h>

#include <stddef.h>

/*
 * dlopen(path, RTLD_NOW | RTLD_LOCAL), finds "aligw_plugin" and copies the descriptor into
 * *desc (zero beyond the plugin's .size). Returns 0 and *dl, or ALIGW_EPLUGIN with a message
 * naming path in err; on failure nothing stays loaded.
 */
int plugin_load_so(const char *path, void **dl, struct aligw_plugin *desc, char *err, size_t len);

/* Formats err and returns ALIGW_EPLUGIN. */
int plugin_refuse(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
